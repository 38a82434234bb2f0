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

import argparse
import csv
import datetime
import sys
from pathlib import Path

from common import REPO, Job, fail, guard, markdown_table, run_grid


def build_jobs(args) -> list[Job]:
    jobs = []
    for noise in [None, *args.noise]:
        data = {"dataset": "femnist", "data_dir": args.data_dir, "partition": "natural"}
        if args.num_clients:
            data["num_clients"] = args.num_clients
        sections = {
            "data": data,
            "training": {"model": "small_cnn", "rounds": args.rounds, "clients_per_round": args.clients_per_round,
                         "local_epochs": 1, "batch_size": 10, "lr": args.lr, "eval_every": args.eval_every, "seed": args.seed},
            "strategy": {"name": "fedavg"},
            "privacy": {"mode": "off"} if noise is None else {"mode": "sample", "noise": noise, "clip": args.clip, "delta": 1e-5},
            "tracking": {"experiment": args.experiment, "tracking_uri": args.tracking_uri, "registered_model": None,
                         "run_name": "no-dp" if noise is None else f"dp-sigma{noise}"},
        }
        jobs.append(Job(labels=(("noise", noise),), sections=sections))
    return jobs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "femnist"))
    parser.add_argument("--noise", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--clients-per-round", type=int, default=10)
    parser.add_argument("--num-clients", type=int, default=None)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--experiment", default="privacy")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--out", default=str(REPO / "pipelines" / "results" / "privacy"))
    parser.add_argument("--quick", action="store_true", help="3 rounds, 12 writers (for tests)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.clients_per_round, args.num_clients, args.eval_every = 3, 4, 12, 1
    if not Path(args.data_dir).is_dir():
        return fail(f"data directory not found: {args.data_dir}")
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
        f"delta 1e-5, RDP accountant, seed {args.seed}.\n\n"
        + markdown_table(["noise sigma", "epsilon (max over parties)", "epsilon (median party)", "test accuracy",
                          "macro recall", "wall time (s)"], rows)
    )
    (out / "table.md").write_text(text)
    with (out / "table.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(csv_rows[0]))
        writer.writeheader()
        writer.writerows(csv_rows)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(guard(main))
