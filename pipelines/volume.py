"""Data volume x distribution: accuracy at 10%, 50% and 100% of every party's data.

FEMNIST, IID (the pooled data dealt to 300 parties at random) and non-IID
(natural partition: one party per writer), FedAvg and the adaptive
aggregator; 10 parties per round. One grouped bar plot, like the paper's
figure, plus a markdown/CSV table; everything logged to MLflow.

    python pipelines/volume.py --data-dir ../shared/data/femnist
    python pipelines/volume.py --data-dir ../shared/data/femnist --quick
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

from fedlight.plots import grouped_bar_figure

VOLUMES = (0.1, 0.5, 1.0)
PARTITIONS = {"iid": "IID", "natural": "non-IID (writers)"}
STRATEGIES = ("fedavg", "adaptive")


def build_jobs(args) -> list[Job]:
    jobs = []
    for volume in VOLUMES:
        for partition in PARTITIONS:
            for strategy in args.strategies:
                for seed in args.seeds:
                    data = {"partition": partition, "volume": volume}
                    if partition == "iid":
                        data["num_clients"] = args.num_clients or 300
                    sections = run_sections(args, data=data, strategy=strategy, seed=seed,
                                            run_name=f"{strategy}-{partition}-v{volume}-s{seed}")
                    labels = (("volume", volume), ("partition", partition), ("strategy", strategy), ("seed", seed))
                    jobs.append(Job(labels=labels, sections=sections))
    return jobs


def main() -> int:
    parser = pipeline_parser(__doc__, name="volume", seeds=(0, 1, 2))
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    args = parse_pipeline_args(parser)
    out = Path(args.out)
    results = run_grid(build_jobs(args), results_path=out / "runs.jsonl", workers=args.workers)
    acc: dict[tuple, list[float]] = {}
    for row in results.values():
        lab = row["labels"]
        acc.setdefault((lab["volume"], lab["partition"], lab["strategy"]), []).append(row["final"]["accuracy"])
    series = {
        f"{strategy}, {PARTITIONS[partition]}": [mean_std(acc[(v, partition, strategy)]) for v in VOLUMES]
        for partition in PARTITIONS for strategy in args.strategies
    }
    figure = grouped_bar_figure(
        [f"{int(v * 100)}%" for v in VOLUMES], series, xlabel="share of every party's data kept (volume)",
        ylabel="test accuracy", title=f"FEMNIST: accuracy vs data volume ({args.rounds} rounds, seeds {args.seeds})",
    )
    out.mkdir(parents=True, exist_ok=True)
    figure.savefig(out / "volume.png", dpi=120)
    rows = [[label, *[f"{m:.4f} ± {s:.4f}" for m, s in values]] for label, values in series.items()]
    csv_rows = [{"series": label, "volume": v, "accuracy_mean": m, "accuracy_std": s}
                for label, values in series.items() for v, (m, s) in zip(VOLUMES, values)]
    text = (
        "# Accuracy against data volume, IID and non-IID\n\n"
        f"Command: `python pipelines/volume.py {' '.join(sys.argv[1:])}`  \n"
        f"Date: {datetime.date.today().isoformat()}; FEMNIST, {args.rounds} rounds, {args.clients_per_round} parties per "
        f"round, small CNN, lr 0.1, batch 10; IID = the pooled data dealt to 300 parties; seeds {args.seeds}.\n\n"
        + markdown_table(["strategy, distribution", *[f"volume {int(v * 100)}%" for v in VOLUMES]], rows)
        + "\n![accuracy vs volume](volume.png)\n"
    )
    return finish(args, out, text, csv_rows, extra_files=[out / "volume.png"])


if __name__ == "__main__":
    sys.exit(guard(main))
