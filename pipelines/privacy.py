"""Accuracy against privacy: sample-level DP-SGD at several noise levels on FEMNIST.

FEMNIST natural partition, 10 parties per round, FedAvg, one run per noise
multiplier plus one without DP. Epsilon is each party's own (delta 1e-5),
from its accountant after the last round: the table gives the maximum over
parties (driven by the smallest parties, whose batches are their whole data,
so they get no amplification by sampling) and the median.

    python pipelines/privacy.py --data-dir ../shared/data/femnist
    python pipelines/privacy.py --data-dir ../shared/data/femnist --quick
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

from common import Job, finish, guard, markdown_table, parse_pipeline_args, pipeline_parser, run_grid, run_sections


def build_jobs(args) -> list[Job]:
    jobs = []
    for noise in [None, *args.noise]:
        privacy = {"mode": "off"} if noise is None else {"mode": "sample", "noise": noise, "clip": args.clip, "delta": 1e-5}
        sections = run_sections(args, data={}, strategy="fedavg", seed=args.seeds[0], lr=args.lr, privacy=privacy,
                                run_name="no-dp" if noise is None else f"dp-sigma{noise}")
        jobs.append(Job(labels=(("noise", noise),), sections=sections))
    return jobs


def main() -> int:
    parser = pipeline_parser(__doc__, name="privacy", seeds=(0,))
    parser.add_argument("--noise", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=0.1)
    args = parse_pipeline_args(parser)
    out = Path(args.out)
    results = run_grid(build_jobs(args), results_path=out / "runs.jsonl", workers=args.workers)
    rows, csv_rows = [], []
    for row in results.values():
        noise, final, privacy = row["labels"]["noise"], row["final"], row["privacy"]
        record = {"noise": noise if noise is not None else "none",
                  "epsilon_max": privacy["epsilon_max"] if privacy else float("inf"),
                  "epsilon_median": privacy["epsilon_median"] if privacy else float("inf"),
                  "accuracy": final["accuracy"], "recall": final["recall"], "wall_time_s": row["wall_time_s"]}
        csv_rows.append(record)
        rows.append([str(record["noise"]), f"{record['epsilon_max']:.2f}" if privacy else "∞ (no DP)",
                     f"{record['epsilon_median']:.2f}" if privacy else "∞", f"{final['accuracy']:.4f}",
                     f"{final['recall']:.4f}", f"{row['wall_time_s']:.0f}"])
    text = (
        "# Accuracy against epsilon (sample-level DP-SGD)\n\n"
        f"Command: `python pipelines/privacy.py {' '.join(sys.argv[1:])}`  \n"
        f"Date: {datetime.date.today().isoformat()}; FEMNIST natural partition, FedAvg, {args.rounds} rounds, "
        f"{args.clients_per_round} parties per round, small CNN, lr {args.lr}, batch 10 (Poisson), clip {args.clip}, "
        f"delta 1e-5, RDP accountant, seed {args.seeds[0]}.\n\n"
        + markdown_table(["noise sigma", "epsilon (max over parties)", "epsilon (median party)", "test accuracy",
                          "macro recall", "wall time (s)"], rows)
    )
    return finish(args, out, text, csv_rows)


if __name__ == "__main__":
    sys.exit(guard(main))
