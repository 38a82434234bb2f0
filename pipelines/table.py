"""The method table: every registered strategy on FEMNIST's natural partition.

For each strategy, condition (clean data, or 30% of parties with 80%
``shift`` label noise) and seed, one 100-round run with 10 parties per
round; the table gives mean and std over seeds of test accuracy, macro
precision, macro recall and macro F1, as markdown and CSV, and logs both to
an MLflow summary run. The paper's "FedLab" row is a framework, not an
algorithm: FedProx and FedAdam stand in that slot.

    python pipelines/table.py --data-dir ../shared/data/femnist                     # full
    python pipelines/table.py --data-dir ../shared/data/femnist --seeds 0 --conditions clean
    python pipelines/table.py --data-dir ../shared/data/femnist --quick             # a smoke run
"""

from __future__ import annotations

import argparse
import csv
import datetime
import sys
from pathlib import Path

from common import REPO, Job, fail, guard, markdown_table, mean_std, run_grid

from fedlight.strategies import STRATEGIES

METRICS = ("accuracy", "precision", "recall", "f1")
CONDITIONS = {
    "clean": {},
    "noisy": {"noisy_client_fraction": 0.3, "label_noise": 0.8, "label_noise_mode": "shift"},
}


def build_jobs(args) -> list[Job]:
    jobs = []
    for condition in args.conditions:
        for strategy in args.strategies:
            for seed in args.seeds:
                data = {"dataset": "femnist", "data_dir": args.data_dir, "partition": "natural", **CONDITIONS[condition]}
                if args.num_clients:
                    data["num_clients"] = args.num_clients
                sections = {
                    "data": data,
                    "training": {"model": "small_cnn", "rounds": args.rounds, "clients_per_round": args.clients_per_round,
                                 "local_epochs": 1, "batch_size": 10, "lr": 0.1, "eval_every": args.eval_every, "seed": seed},
                    "strategy": {"name": strategy},
                    "tracking": {"experiment": args.experiment, "tracking_uri": args.tracking_uri,
                                 "registered_model": None, "run_name": f"{strategy}-{condition}-s{seed}"},
                }
                jobs.append(Job(labels=(("condition", condition), ("strategy", strategy), ("seed", seed)), sections=sections))
    return jobs


def summarise(results: dict, args) -> tuple[str, list[dict]]:
    grouped: dict[tuple[str, str], list[dict]] = {}
    for row in results.values():
        grouped.setdefault((row["labels"]["condition"], row["labels"]["strategy"]), []).append(row["final"])
    text = (
        "# Method table on FEMNIST (natural partition)\n\n"
        f"Command: `python pipelines/table.py {' '.join(sys.argv[1:])}`  \n"
        f"Date: {datetime.date.today().isoformat()}; seeds {list(args.seeds)}; {args.rounds} rounds, "
        f"{args.clients_per_round} parties per round, small CNN, lr 0.1, batch 10, 1 local epoch. "
        "Macro precision/recall/F1 over the 62 classes. Noisy: 30% of parties with 80% shifted labels. "
        "FedLab slot: FedProx and FedAdam.\n\n"
    )
    csv_rows = []
    for condition in args.conditions:
        rows = []
        for strategy in args.strategies:
            finals = grouped[(condition, strategy)]
            cells = [strategy]
            record = {"condition": condition, "strategy": strategy, "seeds": len(finals)}
            for metric in METRICS:
                mean, std = mean_std(f[metric] for f in finals)
                cells.append(f"{100 * mean:.1f} ± {100 * std:.1f}")
                record[f"{metric}_mean"], record[f"{metric}_std"] = mean, std
            rows.append(cells)
            csv_rows.append(record)
        text += f"## {condition}\n\n" + markdown_table(["strategy", *[f"{m} (%)" for m in METRICS]], rows) + "\n"
    return text, csv_rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "femnist"))
    parser.add_argument("--strategies", nargs="+", default=[s for s in STRATEGIES if s != "oracle"])
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=list(CONDITIONS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--clients-per-round", type=int, default=10)
    parser.add_argument("--num-clients", type=int, default=None)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--experiment", default="method-table")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--out", default=str(REPO / "pipelines" / "results" / "table"))
    parser.add_argument("--quick", action="store_true", help="3 rounds, 12 writers, 1 seed (for tests)")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.rounds, args.clients_per_round, args.num_clients, args.eval_every = [0], 3, 4, 12, 1
    unknown = [s for s in args.strategies if s not in STRATEGIES]
    if unknown:
        return fail(f"unknown strategies {unknown}; choose from {', '.join(STRATEGIES)}")
    if not Path(args.data_dir).is_dir():
        return fail(f"data directory not found: {args.data_dir}")
    out = Path(args.out)
    results = run_grid(build_jobs(args), results_path=out / "runs.jsonl", workers=args.workers)
    text, csv_rows = summarise(results, args)
    (out / "table.md").write_text(text)
    with (out / "table.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(csv_rows[0]))
        writer.writeheader()
        writer.writerows(csv_rows)
    print(text)
    print(f"wrote {out / 'table.md'} and {out / 'table.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(guard(main))
