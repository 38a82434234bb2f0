"""Unreliable parties: FedAvg vs the adaptive aggregator vs an oracle.

FEMNIST, natural partition (300 writers), 10 parties per round; 30% of the
parties hold 80% corrupted labels (``random`` or ``shift`` mode) or the data
is clean. The oracle is FedAvg with the corrupted parties' weight set to zero
(on clean data it is FedAvg itself). Writes a markdown table and a CSV of
final test accuracy (mean and std over seeds) and the share of the
FedAvg-to-oracle gap that the adaptive aggregator closes.

    python pipelines/noisy_parties.py --data-dir ../shared/data/femnist            # full: 100 rounds, 3 seeds
    python pipelines/noisy_parties.py --data-dir ../shared/data/femnist --quick    # a smoke run
"""

from __future__ import annotations

import argparse
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

from fedlight.config import StrategyConfig

MODES = ("clean", "random", "shift")
STRATEGIES = ("fedavg", "adaptive", "oracle")


# the adaptive aggregator's settings this pipeline can vary, with their command-line types
ADAPTIVE_OPTIONS = {"alpha_rule": str, "alpha_momentum": float, "alpha_temperature": float, "alpha_tolerance": float}


def adaptive_options(args) -> dict[str, object]:
    """The adaptive aggregator's settings given on the command line (none: its defaults)."""
    return {k: getattr(args, k) for k in ADAPTIVE_OPTIONS if getattr(args, k) is not None}


def adaptive_settings(args) -> str:
    defaults = StrategyConfig()
    settings = {**{k: getattr(defaults, k) for k in ADAPTIVE_OPTIONS}, **adaptive_options(args)}
    return ", ".join(f"{k.removeprefix('alpha_')} {v}" for k, v in settings.items())


def build_jobs(args) -> list[Job]:
    jobs = []
    for mode in MODES:
        for strategy in STRATEGIES:
            if mode == "clean" and strategy == "oracle":
                continue  # identical to FedAvg on clean data
            for seed in args.seeds:
                data = {} if mode == "clean" else {"noisy_client_fraction": 0.3, "label_noise": 0.8, "label_noise_mode": mode}
                options = adaptive_options(args) if strategy == "adaptive" else {}
                sections = run_sections(args, data=data, strategy=strategy, seed=seed, run_name=f"{strategy}-{mode}-s{seed}",
                                        strategy_options=options)
                # non-default adaptive settings are part of the run's identity in the results file
                labels = (("mode", mode), ("strategy", strategy), ("seed", seed), *sorted(options.items()))
                jobs.append(Job(labels=labels, sections=sections))
    return jobs


def summarise(results: dict, args) -> tuple[str, list[dict]]:
    acc: dict[tuple[str, str], list[float]] = {}
    for row in results.values():
        labels = row["labels"]
        acc.setdefault((labels["strategy"], labels["mode"]), []).append(row["final"]["accuracy"])
    for seed_acc in list(acc):
        if seed_acc[0] == "fedavg" and seed_acc[1] == "clean":
            acc[("oracle", "clean")] = acc[seed_acc]
    stats = {key: mean_std(values) for key, values in acc.items()}
    rows, csv_rows = [], []
    for strategy in STRATEGIES:
        cells = [strategy if strategy != "oracle" else "oracle (corrupted parties weight 0)"]
        for mode in MODES:
            mean, std = stats[(strategy, mode)]
            cells.append(f"{mean:.4f} ± {std:.4f}")
            csv_rows.append({"strategy": strategy, "mode": mode, "accuracy_mean": mean, "accuracy_std": std,
                             "seeds": len(acc[(strategy, mode)])})
        rows.append(cells)
    gap_cells = ["adaptive: share of the FedAvg→oracle gap closed"]
    delta_cells = ["adaptive − fedavg (points)"]
    for mode in MODES:
        fedavg, adaptive, oracle = (stats[(s, mode)][0] for s in STRATEGIES)
        gap = oracle - fedavg
        gap_cells.append(f"{(adaptive - fedavg) / gap:.0%}" if mode != "clean" and gap > 0 else "–")
        delta_cells.append(f"{100 * (adaptive - fedavg):+.2f}")
    rows += [gap_cells, delta_cells]
    header = ["strategy", *[f"{m} (mean ± std)" for m in MODES]]
    text = (
        f"# Unreliable parties on FEMNIST\n\n"
        f"Command: `python pipelines/noisy_parties.py {' '.join(sys.argv[1:])}`  \n"
        f"Date: {datetime.date.today().isoformat()}; seeds {list(args.seeds)}; {args.rounds} rounds, "
        f"{args.clients_per_round} parties per round, natural partition, small CNN, lr 0.1, batch 10, 1 local epoch; "
        f"noisy modes: 30% of parties with 80% of labels corrupted. Test accuracy after the last round.  \n"
        f"adaptive: {adaptive_settings(args)}\n\n"
        + markdown_table(header, rows)
    )
    return text, csv_rows


def build_parser() -> argparse.ArgumentParser:
    parser = pipeline_parser(__doc__, name="noisy_parties")
    for option, kind in ADAPTIVE_OPTIONS.items():
        parser.add_argument(f"--{option.replace('_', '-')}", type=kind,
                            help=f"the adaptive aggregator's {option.removeprefix('alpha_')} (default: its default)")
    return parser


def main() -> int:
    args = parse_pipeline_args(build_parser())
    out = Path(args.out)
    results = run_grid(build_jobs(args), results_path=out / "runs.jsonl", workers=args.workers)
    text, csv_rows = summarise(results, args)
    return finish(args, out, text, csv_rows)


if __name__ == "__main__":
    sys.exit(guard(main))
