"""Convergence: test accuracy and loss against round for every strategy, mean and band over seeds.

Uses the method table's runs (FEMNIST natural partition, clean data, the
same settings), so running `table.py` first costs nothing here; missing runs
are trained. One figure with two panels (accuracy, loss).

    python pipelines/convergence.py --data-dir ../shared/data/femnist
    python pipelines/convergence.py --data-dir ../shared/data/femnist --quick
"""

from __future__ import annotations

import sys
from pathlib import Path

import table
from common import REPO, guard, log_summary_run, parse_pipeline_args, pipeline_parser, run_grid

from fedlight.config import STRATEGY_NAMES as STRATEGIES  # the built-ins, without importing torch
from fedlight.plots import band_figure


def main() -> int:
    parser = pipeline_parser(__doc__, name="convergence")
    parser.add_argument("--strategies", nargs="+", default=[s for s in STRATEGIES if s != "oracle"], choices=list(STRATEGIES))
    parser.add_argument("--runs", default=str(REPO / "pipelines" / "results" / "table" / "runs.jsonl"),
                        help="results file shared with table.py")
    parser.set_defaults(experiment="method-table")
    args = parse_pipeline_args(parser)
    args.conditions = ["clean"]
    results = run_grid(table.build_jobs(args), results_path=Path(args.runs), workers=args.workers)
    curves: dict[str, dict[str, list[list[float]]]] = {}
    rounds: list[int] = []
    for row in results.values():
        evaluated = [r for r in row["history"] if "test_accuracy" in r]
        rounds = [r["round"] for r in evaluated]
        entry = curves.setdefault(row["labels"]["strategy"], {"accuracy": [], "loss": []})
        entry["accuracy"].append([r["test_accuracy"] for r in evaluated])
        entry["loss"].append([r["test_loss"] for r in evaluated])
    figure = band_figure(curves, rounds, f"FEMNIST natural partition: convergence (mean and min-max over seeds {args.seeds})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    figure.savefig(out / "convergence.png", dpi=120)
    log_summary_run(experiment=args.experiment, tracking_uri=args.tracking_uri, run_name="convergence-summary",
                    files=[out / "convergence.png"], params={"command": " ".join(sys.argv[1:]) or "(defaults)"})
    print(f"wrote {out / 'convergence.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(guard(main))
