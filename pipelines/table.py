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

import datetime
import sys
from pathlib import Path

from common import (
    Job,
    finish,
    guard,
    markdown_table,
    mean_std,
    parse_pipeline_args,
    pipeline_parser,
    run_grid,
    run_sections,
)

from fedlight.config import STRATEGY_NAMES as STRATEGIES  # the built-ins, without importing torch

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
                sections = run_sections(args, data=dict(CONDITIONS[condition]), strategy=strategy, seed=seed,
                                        run_name=f"{strategy}-{condition}-s{seed}")
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
    parser = pipeline_parser(__doc__, name="table")
    parser.add_argument("--strategies", nargs="+", default=[s for s in STRATEGIES if s != "oracle"], choices=list(STRATEGIES))
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=list(CONDITIONS))
    parser.set_defaults(experiment="method-table")
    args = parse_pipeline_args(parser)
    out = Path(args.out)
    results = run_grid(build_jobs(args), results_path=out / "runs.jsonl", workers=args.workers)
    text, csv_rows = summarise(results, args)
    return finish(args, out, text, csv_rows)


if __name__ == "__main__":
    sys.exit(guard(main))
