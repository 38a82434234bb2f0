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
import csv
import datetime
import sys
from pathlib import Path

from common import REPO, Job, fail, guard, markdown_table, mean_std, run_grid

MODES = ("clean", "random", "shift")
STRATEGIES = ("fedavg", "adaptive", "oracle")


def build_jobs(args) -> list[Job]:
    jobs = []
    for mode in MODES:
        for strategy in STRATEGIES:
            if mode == "clean" and strategy == "oracle":
                continue  # identical to FedAvg on clean data
            for seed in args.seeds:
                data = {"dataset": "femnist", "data_dir": args.data_dir, "partition": "natural"}
                if args.num_clients:
                    data["num_clients"] = args.num_clients
                if mode != "clean":
                    data.update(noisy_client_fraction=0.3, label_noise=0.8, label_noise_mode=mode)
                sections = {
                    "data": data,
                    "training": {"model": "small_cnn", "rounds": args.rounds, "clients_per_round": args.clients_per_round,
                                 "local_epochs": 1, "batch_size": 10, "lr": 0.1, "eval_every": args.eval_every, "seed": seed},
                    "strategy": {"name": strategy},
                    "tracking": {"experiment": args.experiment, "tracking_uri": args.tracking_uri,
                                 "registered_model": None, "run_name": f"{strategy}-{mode}-s{seed}"},
                }
                jobs.append(Job(labels=(("mode", mode), ("strategy", strategy), ("seed", seed)), sections=sections))
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
        f"noisy modes: 30% of parties with 80% of labels corrupted. Test accuracy after the last round.\n\n"
        + markdown_table(header, rows)
    )
    return text, csv_rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "femnist"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--clients-per-round", type=int, default=10)
    parser.add_argument("--num-clients", type=int, default=None)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--workers", type=int, default=1, help="parallel runs (each gets cores / workers threads)")
    parser.add_argument("--experiment", default="noisy-parties")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--out", default=str(REPO / "pipelines" / "results" / "noisy_parties"))
    parser.add_argument("--quick", action="store_true", help="3 rounds, 12 writers, 1 seed (for tests)")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.rounds, args.clients_per_round, args.num_clients, args.eval_every = [0], 3, 4, 12, 1
    out = Path(args.out)
    if not Path(args.data_dir).is_dir():
        return fail(f"data directory not found: {args.data_dir}")
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
