"""Benchmark: fedlight's FedAvg against the FedAvg a user would write by hand, and the cost of DP-SGD.

Comparison. FEMNIST, natural partition (one client per writer, all 300), 10
clients per round, one local epoch of plain SGD (batch 32, lr 0.05), FedAvg
weighted by sample counts, test evaluation every 10 rounds and after the
last; the LEAF CNN for 20 rounds and the small CNN for 60. Each side runs as
its own process, one after the other, the order alternating between repeats:

* fedlight: ``fedlight run ... --output-json``, exactly as a user runs it
  (MLflow tracking on, into a store in a temporary folder that is created
  before the first measurement, so that no run pays for creating it; the
  model is logged but not registered: ``--registered-model ""``), with
  ``--val-fraction 0`` so that every row of a client trains, as in the
  hand-written script (fedlight's default holds 10% out for a local
  validation pass);
* hand-written: ``pipelines/bench_handwritten.py``, plain PyTorch, no
  fedlight code, no DataLoader, no validation split.

Two times per side: the process wall time measured around the subprocess
(interpreter start, imports, data loading, training, fedlight's MLflow
logging) and the rounds-only time (fedlight: the sum of the history's
``round_time_s``; hand-written: ``rounds_time_s``; both include the rounds'
evaluations). Both sides get the same number of torch threads (``--threads``;
``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` for both, ``--threads`` for the
hand-written script too). Medians over ``--repeats``; the 1-minute load
average before each measurement is recorded, since a busy machine makes the
times meaningless.

DP-SGD. In this process, fedlight's FedAvg with sample-level DP-SGD (Opacus,
Poisson sampling, per-party accountants) against the same loop without DP,
on both models: the ratio of their rounds-only times.

    python pipelines/bench.py --data-dir ../shared/data/femnist
    python pipelines/bench.py --data-dir ../shared/data/femnist --quick   # a smoke test, minutes
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import REPO, guard, markdown_table

from fedlight.errors import FedlightError

HANDWRITTEN = REPO / "pipelines" / "bench_handwritten.py"
EXPERIMENT = "bench"
MODEL_LABELS = {"leaf_cnn": "LEAF CNN", "small_cnn": "small CNN"}


def fedlight_command(args: argparse.Namespace, model: str, rounds: int, tracking_uri: str, output_json: Path) -> list[str]:
    script = Path(sys.executable).with_name("fedlight")
    prefix = [str(script)] if script.is_file() else [sys.executable, "-m", "fedlight.cli"]
    return prefix + [
        "run", "--dataset", "femnist", "--data-dir", args.data_dir, "--partition", "natural",
        "--val-fraction", str(args.val_fraction), "--model", model, "--rounds", str(rounds),
        "--clients-per-round", str(args.clients_per_round), "--local-epochs", "1", "--batch-size", str(args.batch_size),
        "--lr", str(args.lr), "--momentum", "0", "--eval-every", str(args.eval_every), "--seed", str(args.seed),
        "--strategy", "fedavg", "--dp-mode", "off", "--experiment", EXPERIMENT, "--tracking-uri", tracking_uri,
        "--registered-model", "", "--run-name", f"bench-{model}", "--output-json", str(output_json), "--no-progress",
    ]


def handwritten_command(args: argparse.Namespace, model: str, rounds: int, output_json: Path) -> list[str]:
    return [
        sys.executable, str(HANDWRITTEN), "--data-dir", args.data_dir, "--model", model, "--rounds", str(rounds),
        "--clients-per-round", str(args.clients_per_round), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
        "--eval-every", str(args.eval_every), "--seed", str(args.seed), "--threads", str(args.threads),
        "--output-json", str(output_json),
    ]


def thread_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def measure(side: str, command: list[str], output_json: Path, threads: int) -> dict[str, Any]:
    """Run one side's process; its wall time, rounds-only time and final accuracy, and the load before it."""
    output_json.unlink(missing_ok=True)
    load = os.getloadavg()
    start = time.perf_counter()
    proc = subprocess.run(command, env=thread_env(threads), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0 or not output_json.is_file():
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise FedlightError(f"the {side} run failed (exit {proc.returncode}): {tail[0]}")
    summary = json.loads(output_json.read_text())
    if side == "fedlight":
        rounds_time = sum(row["round_time_s"] for row in summary["history"])
    else:
        rounds_time = summary["rounds_time_s"]
    return {"side": side, "process_wall_s": wall, "rounds_time_s": rounds_time, "accuracy": summary["final"]["accuracy"],
            "inner_wall_time_s": summary["wall_time_s"], "load_before": list(load)}


def compare(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    from fedlight.tracking import prepare_tracking_store

    tracking_uri = f"sqlite:///{work / 'mlflow.db'}"
    prepare_tracking_store(tracking_uri, [EXPERIMENT])  # every measured fedlight run finds the store made
    rows = []
    for model, rounds in args.comparisons:
        commands = {
            "fedlight": (fedlight_command(args, model, rounds, tracking_uri, work / "fedlight.json"), work / "fedlight.json"),
            "hand-written": (handwritten_command(args, model, rounds, work / "handwritten.json"), work / "handwritten.json"),
        }
        runs: list[dict[str, Any]] = []
        for repeat in range(args.repeats):
            order = ("fedlight", "hand-written") if repeat % 2 == 0 else ("hand-written", "fedlight")
            for side in order:
                command, output = commands[side]
                result = measure(side, command, output, args.threads)
                runs.append({"repeat": repeat, **result})
                print(f"  {model} repeat {repeat + 1}/{args.repeats} {side:12s} process {result['process_wall_s']:7.1f}s  "
                      f"rounds {result['rounds_time_s']:7.1f}s  accuracy {result['accuracy']:.4f}  "
                      f"(load before {result['load_before'][0]:.2f})", flush=True)
        row: dict[str, Any] = {"model": model, "rounds": rounds}
        for side, key in (("fedlight", "fedlight"), ("hand-written", "handwritten")):
            mine = [r for r in runs if r["side"] == side]
            row[f"{key}_process_wall_s"] = statistics.median(r["process_wall_s"] for r in mine)
            row[f"{key}_rounds_time_s"] = statistics.median(r["rounds_time_s"] for r in mine)
            row[f"{key}_accuracy"] = statistics.median(r["accuracy"] for r in mine)
        row["process_ratio"] = row["fedlight_process_wall_s"] / row["handwritten_process_wall_s"]
        row["rounds_ratio"] = row["fedlight_rounds_time_s"] / row["handwritten_rounds_time_s"]
        loads = [r["load_before"][0] for r in runs]
        row["load_1min_min"], row["load_1min_max"] = min(loads), max(loads)
        row["cpu_count"] = os.cpu_count()
        row["runs"] = runs
        rows.append(row)
    return rows


def dp_overhead(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Rounds-only time of fedlight's FedAvg with DP-SGD against without, in this process."""
    import torch

    from fedlight.data import build_federated_data, load_source
    from fedlight.loop import FederatedLoop
    from fedlight.models import build_model
    from fedlight.privacy import SampleLevelDP
    from fedlight.state import ClientStateStore
    from fedlight.strategies import build_strategy

    torch.set_num_threads(args.threads)
    data = build_federated_data(load_source("femnist", args.data_dir), partition="natural",
                                val_fraction=args.val_fraction, seed=args.seed)

    def run_loop(init, privacy: bool) -> tuple[float, float, float | None]:
        store = ClientStateStore()
        dp = None
        if privacy:
            dp = SampleLevelDP(store=store, clip=args.dp_clip, delta=1e-5, noise=args.dp_noise,
                               grad_sample_mode=args.dp_grad_sample_mode)
            dp.calibrate(batches_per_epoch=[1] * len(data.clients), local_epochs=1, rounds=args.dp_rounds)
        loop = FederatedLoop(
            model=copy.deepcopy(init), data=data, strategy=build_strategy("fedavg"), rounds=args.dp_rounds,
            clients_per_round=args.clients_per_round, local_epochs=1, batch_size=args.batch_size,
            lr=args.lr, eval_every=args.eval_every, seed=args.seed, store=store, privacy=dp,
        )
        try:
            history = loop.run()
            return (sum(row["round_time_s"] for row in history), loop.final_metrics()["accuracy"],
                    dp.epsilon_max() if dp is not None else None)
        finally:
            store.close()

    rows = []
    for model in args.models:
        torch.manual_seed(args.seed)
        init = build_model(model, data.input_shape, data.num_classes)
        times: dict[str, list[float]] = {"plain": [], "dp": []}
        for _ in range(args.repeats):
            plain_time, plain_acc, _ = run_loop(init, privacy=False)
            dp_time, dp_acc, dp_eps = run_loop(init, privacy=True)
            times["plain"].append(plain_time)
            times["dp"].append(dp_time)
        plain, dp = statistics.median(times["plain"]), statistics.median(times["dp"])
        rows.append({"model": model, "rounds": args.dp_rounds, "plain_ms_per_round": 1000 * plain / args.dp_rounds,
                     "dp_ms_per_round": 1000 * dp / args.dp_rounds, "dp_over_plain": dp / plain,
                     "plain_accuracy": plain_acc, "dp_accuracy": dp_acc, "dp_epsilon_max": dp_eps})
        print(f"  {model} DP-SGD {rows[-1]['dp_ms_per_round']:.0f} ms/round, plain {rows[-1]['plain_ms_per_round']:.0f} "
              f"ms/round: {dp / plain:.2f}x (epsilon_max {dp_eps:.2f})", flush=True)
    return rows


def report(args: argparse.Namespace, rows: list[dict[str, Any]], dp_rows: list[dict[str, Any]]) -> str:
    fedlight_setting = f"`fedlight run --partition natural --val-fraction {args.val_fraction:g}`"
    lines = [
        f"# fedlight against a hand-written FedAvg ({datetime.date.today().isoformat()})",
        "",
        f"FEMNIST natural partition (one client per writer), {args.clients_per_round} clients per round, 1 local epoch, "
        f"plain SGD (batch {args.batch_size}, lr {args.lr:g}), FedAvg weighted by sample counts, test evaluation every "
        f"{args.eval_every} rounds and after the last; {args.threads} torch threads on both sides; "
        f"{args.repeats} repeat(s) per side, alternating, medians.",
        f"fedlight side: {fedlight_setting} (val-fraction 0: every row of a client trains, as in the hand-written "
        "script), MLflow tracking on, model logged, not registered. "
        "Hand-written side: `pipelines/bench_handwritten.py` (plain PyTorch, no DataLoader, no validation split).",
        "Process wall: measured around each subprocess (start-up, imports, data, training, logging). "
        "Rounds only: fedlight's summed `round_time_s`, the hand-written `rounds_time_s` (both include evaluation).",
        "",
    ]
    header = ["model", "rounds", "fedlight process wall (s)", "hand-written process wall (s)", "process ratio",
              "fedlight rounds only (s)", "hand-written rounds only (s)", "rounds-only ratio",
              "accuracy fedlight / hand-written", "load (1 min) before, min-max", "cores"]
    table = [
        [MODEL_LABELS.get(r["model"], r["model"]), str(r["rounds"]), f"{r['fedlight_process_wall_s']:.1f}",
         f"{r['handwritten_process_wall_s']:.1f}", f"{r['process_ratio']:.2f}", f"{r['fedlight_rounds_time_s']:.1f}",
         f"{r['handwritten_rounds_time_s']:.1f}", f"{r['rounds_ratio']:.2f}",
         f"{r['fedlight_accuracy']:.4f} / {r['handwritten_accuracy']:.4f}",
         f"{r['load_1min_min']:.2f}-{r['load_1min_max']:.2f}", str(r["cpu_count"])]
        for r in rows
    ]
    lines.append(markdown_table(header, table))
    if dp_rows:
        lines += [
            f"## DP-SGD (fedlight, {args.dp_grad_sample_mode}, sigma {args.dp_noise:g}, clip {args.dp_clip:g}, "
            f"{args.dp_rounds} round(s), same settings otherwise, in one process)",
            "",
            markdown_table(
                ["model", "plain (ms/round)", "DP-SGD (ms/round)", "DP round / plain round", "accuracy plain / DP",
                 "epsilon_max"],
                [[MODEL_LABELS.get(r["model"], r["model"]), f"{r['plain_ms_per_round']:.0f}", f"{r['dp_ms_per_round']:.0f}",
                  f"{r['dp_over_plain']:.2f}", f"{r['plain_accuracy']:.4f} / {r['dp_accuracy']:.4f}",
                  f"{r['dp_epsilon_max']:.2f}"] for r in dp_rows],
            ),
        ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from fedlight.privacy import GRAD_SAMPLE_MODES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "femnist"))
    parser.add_argument("--models", default="leaf_cnn,small_cnn", help="comma-separated, of leaf_cnn and small_cnn")
    parser.add_argument("--leaf-cnn-rounds", type=int, default=20)
    parser.add_argument("--small-cnn-rounds", type=int, default=60)
    parser.add_argument("--clients-per-round", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-fraction", type=float, default=0.0,
                        help="fedlight's local validation split (0: every row trains, as in the hand-written script)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of both sides (default: all cores)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating repeats per side; medians are reported")
    parser.add_argument("--dp-rounds", type=int, default=10, help="rounds of the DP-SGD comparison (0: skip it)")
    parser.add_argument("--dp-noise", type=float, default=1.0)
    parser.add_argument("--dp-clip", type=float, default=1.0)
    parser.add_argument("--dp-grad-sample-mode", choices=GRAD_SAMPLE_MODES, default="ghost",
                        help="ghost clipping (fedlight's default) or Opacus' per-sample gradient hooks")
    parser.add_argument("--out", default=str(REPO / "pipelines" / "results" / "bench"))
    parser.add_argument("--quick", action="store_true",
                        help="2 rounds per model, 3 clients per round, 1 repeat, 1 DP round (a smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.leaf_cnn_rounds = args.small_cnn_rounds = 2
        args.clients_per_round, args.repeats, args.dp_rounds, args.eval_every = 3, 1, 1, 1
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODEL_LABELS]
    if unknown or not args.models:
        raise FedlightError(f"--models: choose from leaf_cnn, small_cnn; got {','.join(unknown) or 'none'}")
    for name in ("leaf_cnn_rounds", "small_cnn_rounds", "clients_per_round", "batch_size", "eval_every", "threads", "repeats"):
        if getattr(args, name) < 1:
            raise FedlightError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.dp_rounds < 0:
        raise FedlightError(f"--dp-rounds must be non-negative, got {args.dp_rounds}")
    if not (Path(args.data_dir) / "train.npz").is_file():
        raise FedlightError(f"data directory not found (no train.npz): {args.data_dir}")
    args.comparisons = [(m, args.leaf_cnn_rounds if m == "leaf_cnn" else args.small_cnn_rounds) for m in args.models]
    return args


def main() -> int:
    args = parse_args()
    print(f"FEMNIST natural partition, {args.clients_per_round} clients per round, batch {args.batch_size}, lr {args.lr:g}, "
          f"eval every {args.eval_every}; fedlight with --val-fraction {args.val_fraction:g}; {args.threads} torch threads, "
          f"{os.cpu_count()} cores; load {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="fedlight-bench-") as work:
        rows = compare(args, Path(work))
    dp_rows = dp_overhead(args) if args.dp_rounds > 0 else []
    text = report(args, rows, dp_rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k != "comparisons"}
    payload = {"command": " ".join(sys.argv[1:]) or "(defaults)", "settings": settings, "cpu_count": os.cpu_count(),
               "comparison": rows, "dp": dp_rows}
    (out / "bench.json").write_text(json.dumps(payload, indent=2))
    (out / "bench.md").write_text(text)
    print(text)
    print(f"wrote {out / 'bench.md'} and {out / 'bench.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(guard(main))
