"""Unreliable parties: FedAvg vs the adaptive aggregator vs an oracle.

FEMNIST, natural partition (300 writers), 10 parties per round; 30% of the
parties hold 80% corrupted labels (``random`` or ``shift`` mode) or the data
is clean. The oracle is FedAvg with the corrupted parties' weight set to zero
(on clean data it is FedAvg itself). Writes a markdown table and a CSV of
test accuracy (mean and std over seeds) and the share of the FedAvg-to-oracle
gap that the adaptive aggregator closes: after the last round, and averaged
over the last 10 rounds when every round is evaluated (the default here), as
one round's model moves by points with the ten parties it happened to sample.

Local training is SGD with lr 0.1 and momentum 0.5 (``--momentum``): with
plain SGD the model was near chance for the first 10 rounds and still rising
1.5 points per 10 rounds at round 100 (README, noisy-parties results).

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
                                        momentum=args.momentum, strategy_options=options)
                # non-default settings are part of the run's identity in the results file
                training = (("momentum", args.momentum),) if args.momentum else ()
                labels = (("mode", mode), ("strategy", strategy), ("seed", seed), *training, *sorted(options.items()))
                jobs.append(Job(labels=labels, sections=sections))
    return jobs


LATE_ROUNDS = 10  # the late-mean table averages this many last rounds


def late_mean(history: list[dict], rounds: int) -> float | None:
    """Mean test accuracy over the last ``rounds`` rounds, or None unless each of them was evaluated."""
    evaluated = {row["round"]: row["test_accuracy"] for row in history if "test_accuracy" in row}
    last = max((row["round"] for row in history), default=0)
    wanted = range(last - rounds + 1, last + 1)
    if last < rounds or any(r not in evaluated for r in wanted):
        return None
    return sum(evaluated[r] for r in wanted) / rounds


def _comparison(acc: dict[tuple[str, str], list[float]], measure: str) -> tuple[list[list[str]], list[dict]]:
    """Table rows (strategy x mode, mean ± std, then the gap rows) and CSV rows for one accuracy measure."""
    acc = dict(acc)
    if ("fedavg", "clean") in acc:
        acc[("oracle", "clean")] = acc[("fedavg", "clean")]  # the oracle is FedAvg on clean data
    stats = {key: mean_std(values) for key, values in acc.items()}
    rows, csv_rows = [], []
    for strategy in STRATEGIES:
        cells = [strategy if strategy != "oracle" else "oracle (corrupted parties weight 0)"]
        for mode in MODES:
            mean, std = stats[(strategy, mode)]
            cells.append(f"{mean:.4f} ± {std:.4f}")
            csv_rows.append({"measure": measure, "strategy": strategy, "mode": mode, "accuracy_mean": mean,
                             "accuracy_std": std, "seeds": len(acc[(strategy, mode)])})
        rows.append(cells)
    gap_cells = ["adaptive: share of the FedAvg→oracle gap closed"]
    delta_cells = ["adaptive − fedavg (points)"]
    for mode in MODES:
        fedavg, adaptive, oracle = (stats[(s, mode)][0] for s in STRATEGIES)
        gap = oracle - fedavg
        gap_cells.append(f"{(adaptive - fedavg) / gap:.0%}" if mode != "clean" and gap > 0 else "–")
        delta_cells.append(f"{100 * (adaptive - fedavg):+.2f}")
    return rows + [gap_cells, delta_cells], csv_rows


def summarise(results: dict, args) -> tuple[str, list[dict]]:
    final: dict[tuple[str, str], list[float]] = {}
    late: dict[tuple[str, str], list[float | None]] = {}  # None: a run without every late round evaluated
    for row in results.values():
        key = (row["labels"]["strategy"], row["labels"]["mode"])
        final.setdefault(key, []).append(row["final"]["accuracy"])
        late.setdefault(key, []).append(late_mean(row.get("history", []), LATE_ROUNDS))
    header = ["strategy", *[f"{m} (mean ± std)" for m in MODES]]
    rows, csv_rows = _comparison(final, "final")
    text = (
        f"# Unreliable parties on FEMNIST\n\n"
        f"Command: `python pipelines/noisy_parties.py {' '.join(sys.argv[1:])}`  \n"
        f"Date: {datetime.date.today().isoformat()}; seeds {list(args.seeds)}; {args.rounds} rounds, "
        f"{args.clients_per_round} parties per round, natural partition, small CNN, lr 0.1, local momentum "
        f"{args.momentum}, batch 10, 1 local epoch; noisy modes: 30% of parties with 80% of labels corrupted.  \n"
        f"adaptive: {adaptive_settings(args)}\n\n"
        f"Test accuracy after the last round:\n\n" + markdown_table(header, rows)
    )
    if all(value is not None for values in late.values() for value in values):
        late_rows, late_csv = _comparison(late, f"mean_last_{LATE_ROUNDS}")
        csv_rows += late_csv
        text += (f"\nMean test accuracy over the last {LATE_ROUNDS} rounds (each evaluated; one round's "
                 f"accuracy swings by points with the parties it samples):\n\n" + markdown_table(header, late_rows))
    return text, csv_rows


def build_parser() -> argparse.ArgumentParser:
    parser = pipeline_parser(__doc__, name="noisy_parties")
    parser.add_argument("--momentum", type=float, default=0.5, help="local SGD momentum of every run (default 0.5)")
    parser.set_defaults(eval_every=1)
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
