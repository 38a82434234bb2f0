"""Benchmark: fedlight's FedAvg against a hand-written FedAvg and Flower's, Ray against sequential, and DP-SGD's cost.

Comparison (parts ``handwritten`` and ``flower``). FEMNIST, natural
partition (one client per writer, all 300), 10 clients per round, one local
epoch of plain SGD (batch 32, lr 0.05), FedAvg weighted by sample counts,
test evaluation every 10 rounds and after the last; the LEAF CNN for 20
rounds and the small CNN for 60. Each side runs as its own process, one
after the other, the order rotating between repeats:

* fedlight: ``fedlight run ... --output-json``, exactly as a user runs it
  (MLflow tracking on, into a store in a temporary folder that is created
  before the first measurement, so that no run pays for creating it; the
  model is logged but not registered: ``--registered-model ""``), with
  ``--val-fraction 0`` so that every row of a client trains, as in the
  other two (fedlight's default holds 10% out for a local validation pass);
* hand-written: ``pipelines/bench_handwritten.py``, plain PyTorch, no
  fedlight code, no DataLoader, no validation split;
* Flower: ``pipelines/bench_flower.py``, the same plain PyTorch client as a
  Flower 1.42 ClientApp, Flower's FedAvg in a ServerApp, on Flower's
  Ray-backed simulation engine (the optional extra ``fedlight[flower]``).

Two times per side: the process wall time measured around the subprocess
(interpreter start, imports, data loading, training, fedlight's MLflow
logging, Flower's Ray start-up) and the rounds-only time (fedlight: the sum
of the history's ``round_time_s``; the others: ``rounds_time_s``; all
include the rounds' evaluations). Every side gets the same number of torch
threads (``--threads``; ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` and the
scripts' ``--threads``). Medians over ``--repeats``; the 1-minute load
average before each measurement is recorded, and ``uptime`` before and after
the benchmark, since a busy machine makes the times meaningless.

Ray (part ``ray``). fedlight's own executors on the same FedAvg work at 10
and 50 clients per round, both models: ``--executor sequential`` against
``--executor ray --workers 2 --worker-cpus threads/2``, process wall and
rounds only, with the Ray executor's start-up (which fedlight logs with
the first round's metrics as ``executor_startup_s``; it is not part of any
``round_time_s``) shown apart.

DP-SGD (part ``dp``). In this process, fedlight's FedAvg with sample-level
DP-SGD (Opacus, Poisson sampling, per-party accountants) against the same
loop without DP, on both models: the ratio of their rounds-only times.

    python pipelines/bench.py --data-dir ../shared/data/femnist
    python pipelines/bench.py --data-dir ../shared/data/femnist --parts flower,ray
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
FLOWER = REPO / "pipelines" / "bench_flower.py"
EXPERIMENT = "bench"
MODEL_LABELS = {"leaf_cnn": "LEAF CNN", "small_cnn": "small CNN"}
PARTS = ("handwritten", "flower", "ray", "dp")
# What the ray part needs from `fedlight run`: these flags, and this entry in the --output-json summary.
RAY_FLAGS = ("--executor", "--workers", "--worker-cpus")
EXECUTION_KEY = "execution"  # {"executor": "ray", "startup_s": ...}, where the summary has it
STARTUP_METRIC = "executor_startup_s"  # in the first round's metrics otherwise


def fedlight_prefix() -> list[str]:
    script = Path(sys.executable).with_name("fedlight")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "fedlight.cli"]


def fedlight_command(args: argparse.Namespace, model: str, rounds: int, tracking_uri: str, output_json: Path,
                     clients_per_round: int | None = None, execution: list[str] | None = None) -> list[str]:
    cpr = args.clients_per_round if clients_per_round is None else clients_per_round
    return fedlight_prefix() + [
        "run", "--dataset", "femnist", "--data-dir", args.data_dir, "--partition", "natural",
        "--val-fraction", str(args.val_fraction), "--model", model, "--rounds", str(rounds),
        "--clients-per-round", str(cpr), "--local-epochs", "1", "--batch-size", str(args.batch_size),
        "--lr", str(args.lr), "--momentum", "0", "--eval-every", str(args.eval_every), "--seed", str(args.seed),
        "--strategy", "fedavg", "--dp-mode", "off", "--experiment", EXPERIMENT, "--tracking-uri", tracking_uri,
        "--registered-model", "", "--run-name", f"bench-{model}", "--output-json", str(output_json), "--no-progress",
    ] + list(execution or [])


def script_command(script: Path, args: argparse.Namespace, model: str, rounds: int, output_json: Path) -> list[str]:
    command = [
        sys.executable, str(script), "--data-dir", args.data_dir, "--model", model, "--rounds", str(rounds),
        "--clients-per-round", str(args.clients_per_round), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
        "--eval-every", str(args.eval_every), "--seed", str(args.seed), "--threads", str(args.threads),
        "--output-json", str(output_json),
    ]
    if script == FLOWER and args.flower_client_cpus is not None:
        command += ["--client-cpus", str(args.flower_client_cpus)]
    return command


def thread_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def uptime() -> str:
    """The machine's load as ``uptime`` prints it (the load averages from /proc where uptime is missing)."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def execution_of(summary: dict[str, Any], executor: str) -> dict[str, Any]:
    """What a fedlight run reports of its executor; refuses a run that shows no sign of the one asked for.

    fedlight logs the executor's start-up (Ray's; the sequential executor has none) with the first round's
    metrics, ``executor_startup_s``; a summary entry ``execution`` (``executor``, ``startup_s``) is read where
    there is one.
    """
    execution = summary.get(EXECUTION_KEY)
    if isinstance(execution, dict) and "executor" in execution:
        if execution["executor"] != executor:
            raise FedlightError(f"asked fedlight for --executor {executor}, its summary says {execution['executor']!r}")
        startup = execution.get("startup_s")
    else:
        history = summary.get("history") or [{}]
        startup = history[0].get(STARTUP_METRIC)
    if executor == "ray" and not (isinstance(startup, (int, float)) and startup > 0):
        raise FedlightError(f"the fedlight run asked for --executor ray reports no Ray start-up ({STARTUP_METRIC} in its "
                            "first round, or execution.startup_s in its summary): did it run on Ray?")
    if executor == "sequential" and startup:
        raise FedlightError(f"the fedlight run asked for --executor sequential reports an executor start-up of {startup}s")
    return {"executor": executor, "startup_s": startup}


def measure(side: str, command: list[str], output_json: Path, threads: int, executor: str | None = None) -> dict[str, Any]:
    """Run one side's process; its wall time, rounds-only time, start-up and final accuracy, and the load before it."""
    output_json.unlink(missing_ok=True)
    load = os.getloadavg()
    start = time.perf_counter()
    proc = subprocess.run(command, env=thread_env(threads), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0 or not output_json.is_file():
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise FedlightError(f"the {side} run failed (exit {proc.returncode}): {tail[0]}")
    summary = json.loads(output_json.read_text())
    startup = None
    if side.startswith("fedlight"):
        rounds_time = sum(row["round_time_s"] for row in summary["history"])
        if executor is not None:
            startup = execution_of(summary, executor).get("startup_s")
    else:
        rounds_time = summary["rounds_time_s"]
        startup = summary.get("startup_s")
    return {"side": side, "process_wall_s": wall, "rounds_time_s": rounds_time, "startup_s": startup,
            "accuracy": summary["final"]["accuracy"], "inner_wall_time_s": summary["wall_time_s"],
            "load_before": list(load)}


def _print_run(label: str, repeat: int, args: argparse.Namespace, result: dict[str, Any]) -> None:
    startup = f"  start-up {result['startup_s']:5.1f}s" if result["startup_s"] is not None else ""
    print(f"  {label} repeat {repeat + 1}/{args.repeats} {result['side']:14s} process {result['process_wall_s']:7.1f}s  "
          f"rounds {result['rounds_time_s']:7.1f}s{startup}  accuracy {result['accuracy']:.4f}  "
          f"(load before {result['load_before'][0]:.2f})", flush=True)


def _median_row(runs: list[dict[str, Any]], sides: dict[str, str]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for side, key in sides.items():
        mine = [r for r in runs if r["side"] == side]
        row[f"{key}_process_wall_s"] = statistics.median(r["process_wall_s"] for r in mine)
        row[f"{key}_rounds_time_s"] = statistics.median(r["rounds_time_s"] for r in mine)
        row[f"{key}_accuracy"] = statistics.median(r["accuracy"] for r in mine)
        startups = [r["startup_s"] for r in mine if r["startup_s"] is not None]
        row[f"{key}_startup_s"] = statistics.median(startups) if startups else None
    loads = [r["load_before"][0] for r in runs]
    row["load_1min_min"], row["load_1min_max"] = min(loads), max(loads)
    row["cpu_count"] = os.cpu_count()
    row["runs"] = runs
    return row


def compare(args: argparse.Namespace, work: Path, tracking_uri: str) -> list[dict[str, Any]]:
    """fedlight against the hand-written script and/or Flower, per model; medians and ratios."""
    sides = {"fedlight": "fedlight"}
    if "handwritten" in args.parts:
        sides["hand-written"] = "handwritten"
    if "flower" in args.parts:
        sides["Flower"] = "flower"
    rows = []
    for model, rounds in args.comparisons:
        outputs = {side: work / f"{key}.json" for side, key in sides.items()}
        commands = {side: (fedlight_command(args, model, rounds, tracking_uri, outputs[side]) if side == "fedlight" else
                           script_command(HANDWRITTEN if side == "hand-written" else FLOWER, args, model, rounds,
                                          outputs[side]))
                    for side in sides}
        names = list(sides)
        runs: list[dict[str, Any]] = []
        for repeat in range(args.repeats):
            shift = repeat % len(names)
            for side in names[shift:] + names[:shift]:
                result = measure(side, commands[side], outputs[side], args.threads)
                runs.append({"repeat": repeat, **result})
                _print_run(model, repeat, args, result)
        row = {"model": model, "rounds": rounds, **_median_row(runs, sides)}
        if "handwritten" in args.parts:
            row["process_ratio"] = row["fedlight_process_wall_s"] / row["handwritten_process_wall_s"]
            row["rounds_ratio"] = row["fedlight_rounds_time_s"] / row["handwritten_rounds_time_s"]
        if "flower" in args.parts:
            row["fedlight_over_flower_process"] = row["fedlight_process_wall_s"] / row["flower_process_wall_s"]
            row["fedlight_over_flower_rounds"] = row["fedlight_rounds_time_s"] / row["flower_rounds_time_s"]
            print(f"  {model}: fedlight's process wall / Flower's = {row['fedlight_over_flower_process']:.2f}", flush=True)
            if "handwritten" in args.parts:
                row["flower_over_handwritten_process"] = row["flower_process_wall_s"] / row["handwritten_process_wall_s"]
        rows.append(row)
    return rows


def check_ray_support() -> None:
    """Fail at once, before anything is measured, where `fedlight run` does not take the Ray executor's flags."""
    proc = subprocess.run(fedlight_prefix() + ["run", "--help"], capture_output=True, text=True, env=thread_env(1))
    missing = [flag for flag in RAY_FLAGS if flag not in proc.stdout]
    if proc.returncode != 0 or missing:
        raise FedlightError(f"part ray: `fedlight run` does not take {', '.join(missing) or 'its flags'} "
                            f"(exit {proc.returncode}); this fedlight has no Ray executor")


def ray_vs_sequential(args: argparse.Namespace, work: Path, tracking_uri: str) -> list[dict[str, Any]]:
    """fedlight's sequential executor against its Ray executor, per model and clients per round."""
    worker_cpus = args.ray_worker_cpus or max(1, args.threads // args.ray_workers)
    executions = {
        "fedlight seq": ("sequential", ["--executor", "sequential"]),
        "fedlight Ray": ("ray", ["--executor", "ray", "--workers", str(args.ray_workers), "--worker-cpus", f"{worker_cpus:g}"]),
    }
    keys = {"fedlight seq": "sequential", "fedlight Ray": "ray"}
    rows = []
    for model, rounds in args.comparisons:
        rounds = args.ray_rounds or rounds
        for cpr in args.ray_clients_per_round:
            output = work / "ray.json"
            runs: list[dict[str, Any]] = []
            for repeat in range(args.repeats):
                order = list(executions) if repeat % 2 == 0 else list(executions)[::-1]
                for side in order:
                    executor, flags = executions[side]
                    command = fedlight_command(args, model, rounds, tracking_uri, output, clients_per_round=cpr,
                                               execution=flags)
                    result = measure(side, command, output, args.threads, executor=executor)
                    runs.append({"repeat": repeat, **result})
                    _print_run(f"{model} {cpr}/round", repeat, args, result)
            row = {"model": model, "rounds": rounds, "clients_per_round": cpr, "workers": args.ray_workers,
                   "worker_cpus": worker_cpus, **_median_row(runs, keys)}
            row["ray_over_sequential_rounds"] = row["ray_rounds_time_s"] / row["sequential_rounds_time_s"]
            row["ray_over_sequential_process"] = row["ray_process_wall_s"] / row["sequential_process_wall_s"]
            print(f"  {model} {cpr}/round: Ray / sequential rounds only {row['ray_over_sequential_rounds']:.2f}, "
                  f"process {row['ray_over_sequential_process']:.2f}", flush=True)
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


def _load(r: dict[str, Any]) -> str:
    return f"{r['load_1min_min']:.2f}-{r['load_1min_max']:.2f}"


def _opt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def report(args: argparse.Namespace, rows: list[dict[str, Any]], ray_rows: list[dict[str, Any]],
           dp_rows: list[dict[str, Any]], loads: tuple[str, str]) -> str:
    lines = [
        f"# fedlight against a hand-written FedAvg and Flower; Ray; DP-SGD ({datetime.date.today().isoformat()})",
        "",
        f"Command: `python pipelines/bench.py {' '.join(sys.argv[1:])}`; parts {','.join(args.parts)}; "
        f"{os.cpu_count()} cores, {args.threads} torch threads per side.",
        f"Machine load (`uptime`) before: `{loads[0]}`; after: `{loads[1]}`.",
        "",
    ]
    if rows:
        lines += [
            f"FEMNIST natural partition (one client per writer), {args.clients_per_round} clients per round, 1 local "
            f"epoch, plain SGD (batch {args.batch_size}, lr {args.lr:g}), FedAvg weighted by sample counts, test "
            f"evaluation every {args.eval_every} rounds and after the last; {args.repeats} repeat(s) per side, "
            "order rotating, medians.",
            f"fedlight side: `fedlight run --partition natural --val-fraction {args.val_fraction:g}` (every row of a "
            "client trains, as on the other sides), MLflow tracking on, model logged, not registered. "
            "Hand-written side: `pipelines/bench_handwritten.py` (plain PyTorch, no DataLoader, no validation split). "
            "Flower side: `pipelines/bench_flower.py` (the same client as a Flower ClientApp, Flower's FedAvg, "
            "Flower's Ray simulation engine).",
            "Process wall: measured around each subprocess (start-up, imports, data, training, logging, Flower's Ray). "
            "Rounds only: fedlight's summed `round_time_s`, the others' `rounds_time_s` (all include evaluation).",
            "",
        ]
        header = ["model", "rounds", "fedlight process wall (s)"]
        if "handwritten" in args.parts:
            header += ["hand-written process wall (s)", "process ratio"]
        if "flower" in args.parts:
            header += ["Flower process wall (s)", "Flower start-up (s)", "fedlight / Flower process"]
        header += ["fedlight rounds only (s)"]
        if "handwritten" in args.parts:
            header += ["hand-written rounds only (s)", "rounds-only ratio"]
        if "flower" in args.parts:
            header += ["Flower rounds only (s)", "fedlight / Flower rounds only"]
        header += ["accuracy " + " / ".join(s for s, p in (("fedlight", None), ("hand-written", "handwritten"),
                                                            ("Flower", "flower")) if p is None or p in args.parts),
                   "load (1 min) before, min-max", "cores"]
        table = []
        for r in rows:
            cells = [MODEL_LABELS.get(r["model"], r["model"]), str(r["rounds"]), f"{r['fedlight_process_wall_s']:.1f}"]
            if "handwritten" in args.parts:
                cells += [f"{r['handwritten_process_wall_s']:.1f}", f"{r['process_ratio']:.2f}"]
            if "flower" in args.parts:
                cells += [f"{r['flower_process_wall_s']:.1f}", _opt(r["flower_startup_s"]),
                          f"{r['fedlight_over_flower_process']:.2f}"]
            cells += [f"{r['fedlight_rounds_time_s']:.1f}"]
            if "handwritten" in args.parts:
                cells += [f"{r['handwritten_rounds_time_s']:.1f}", f"{r['rounds_ratio']:.2f}"]
            if "flower" in args.parts:
                cells += [f"{r['flower_rounds_time_s']:.1f}", f"{r['fedlight_over_flower_rounds']:.2f}"]
            accuracies = [r["fedlight_accuracy"]] + [r[f"{p}_accuracy"] for p in ("handwritten", "flower") if p in args.parts]
            cells += [" / ".join(f"{a:.4f}" for a in accuracies), _load(r), str(r["cpu_count"])]
            table.append(cells)
        lines.append(markdown_table(header, table))
    if ray_rows:
        lines += [
            f"## fedlight sequential against Ray ({args.ray_workers} workers x {ray_rows[0]['worker_cpus']:g} CPU)",
            "",
            f"The same FedAvg work (val-fraction {args.val_fraction:g}, tracking on), `--executor sequential` against `--executor ray "
            f"--workers {args.ray_workers}`; each its own process, {args.repeats} repeat(s), alternating, medians. "
            "Ray start-up: the executor's own report (`executor_startup_s`: starting or joining the cluster, the "
            "workers, the run's data put into the object store); it is part of the process wall, not of the rounds.",
            "",
            markdown_table(
                ["model", "rounds", "clients/round", "sequential process wall (s)", "Ray process wall (s)",
                 "Ray start-up (s)", "Ray process wall less start-up (s)", "Ray / sequential process",
                 "sequential rounds only (s)", "Ray rounds only (s)",
                 "Ray / sequential rounds only", "accuracy sequential / Ray", "load (1 min) before, min-max", "cores"],
                [[MODEL_LABELS.get(r["model"], r["model"]), str(r["rounds"]), str(r["clients_per_round"]),
                  f"{r['sequential_process_wall_s']:.1f}", f"{r['ray_process_wall_s']:.1f}", _opt(r["ray_startup_s"]),
                  _opt(r["ray_process_wall_s"] - r["ray_startup_s"] if r["ray_startup_s"] is not None else None),
                  f"{r['ray_over_sequential_process']:.2f}", f"{r['sequential_rounds_time_s']:.1f}",
                  f"{r['ray_rounds_time_s']:.1f}", f"{r['ray_over_sequential_rounds']:.2f}",
                  f"{r['sequential_accuracy']:.4f} / {r['ray_accuracy']:.4f}", _load(r), str(r["cpu_count"])]
                 for r in ray_rows],
            ),
        ]
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


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise FedlightError(f"{flag}: expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise FedlightError(f"{flag}: expected positive integers, got {text!r}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from fedlight.config import DP_GRAD_SAMPLE_MODES as GRAD_SAMPLE_MODES  # fedlight.privacy imports torch and Opacus

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "femnist"))
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--models", default="leaf_cnn,small_cnn", help="comma-separated, of leaf_cnn and small_cnn")
    parser.add_argument("--leaf-cnn-rounds", type=int, default=20)
    parser.add_argument("--small-cnn-rounds", type=int, default=60)
    parser.add_argument("--clients-per-round", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-fraction", type=float, default=0.0,
                        help="fedlight's local validation split (0: every row trains, as in the other sides)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of every side (default: all cores)")
    parser.add_argument("--repeats", type=int, default=2, help="repeats per side, order rotating; medians are reported")
    parser.add_argument("--flower-client-cpus", type=float, default=None,
                        help="Flower's client_resources num_cpus (default: --threads, one client at a time)")
    parser.add_argument("--ray-clients-per-round", default="10,50", help="part ray: comma-separated clients per round")
    parser.add_argument("--ray-rounds", type=int, default=0, help="part ray: rounds per run (0: the models' rounds above)")
    parser.add_argument("--ray-workers", type=int, default=2)
    parser.add_argument("--ray-worker-cpus", type=float, default=None, help="part ray: CPUs per worker (default: threads / workers)")
    parser.add_argument("--dp-rounds", type=int, default=10, help="rounds of the DP-SGD comparison")
    parser.add_argument("--dp-noise", type=float, default=1.0)
    parser.add_argument("--dp-clip", type=float, default=1.0)
    parser.add_argument("--dp-grad-sample-mode", choices=GRAD_SAMPLE_MODES, default="ghost",
                        help="ghost clipping (fedlight's default) or Opacus' per-sample gradient hooks")
    parser.add_argument("--out", default=str(REPO / "pipelines" / "results" / "bench"))
    parser.add_argument("--quick", action="store_true",
                        help="2 rounds per model, 3 clients per round (Ray: 3 and 6), 1 repeat, 1 DP round, "
                             "into OUT/quick (a smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.leaf_cnn_rounds = args.small_cnn_rounds = 2
        args.clients_per_round, args.repeats, args.dp_rounds, args.eval_every = 3, 1, 1, 1
        given = {a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:])}
        if "--ray-clients-per-round" not in given:
            args.ray_clients_per_round = "3,6"
        if "--out" not in given:  # a smoke test's numbers never replace the real table
            args.out = str(Path(args.out) / "quick")
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in args.parts if p not in PARTS]
    if unknown or not args.parts:
        raise FedlightError(f"--parts: choose from {', '.join(PARTS)}; got {','.join(unknown) or 'none'}")
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODEL_LABELS]
    if unknown or not args.models:
        raise FedlightError(f"--models: choose from leaf_cnn, small_cnn; got {','.join(unknown) or 'none'}")
    for name in ("leaf_cnn_rounds", "small_cnn_rounds", "clients_per_round", "batch_size", "eval_every", "threads", "repeats",
                 "ray_workers", "dp_rounds"):
        if getattr(args, name) < 1:
            raise FedlightError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.ray_rounds < 0:
        raise FedlightError(f"--ray-rounds must be non-negative, got {args.ray_rounds}")
    for name in ("flower_client_cpus", "ray_worker_cpus"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise FedlightError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    args.ray_clients_per_round = _int_list(args.ray_clients_per_round, "--ray-clients-per-round")
    if not (Path(args.data_dir) / "train.npz").is_file():
        raise FedlightError(f"data directory not found (no train.npz): {args.data_dir}")
    if "flower" in args.parts:
        import importlib.util

        if importlib.util.find_spec("flwr") is None or importlib.util.find_spec("ray") is None:
            raise FedlightError("part flower needs Flower's simulation engine: pip install -e '.[flower]'")
    args.comparisons = [(m, args.leaf_cnn_rounds if m == "leaf_cnn" else args.small_cnn_rounds) for m in args.models]
    return args


def main() -> int:
    args = parse_args()
    if "ray" in args.parts:
        check_ray_support()
    loads_before = uptime()
    print(f"FEMNIST natural partition, batch {args.batch_size}, lr {args.lr:g}, eval every {args.eval_every}; parts "
          f"{','.join(args.parts)}; fedlight with --val-fraction {args.val_fraction:g}; {args.threads} torch threads, "
          f"{os.cpu_count()} cores; {loads_before}", flush=True)
    rows: list[dict[str, Any]] = []
    ray_rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fedlight-bench-") as work:
        from fedlight.tracking import prepare_tracking_store

        tracking_uri = f"sqlite:///{Path(work) / 'mlflow.db'}"
        prepare_tracking_store(tracking_uri, [EXPERIMENT])  # every measured fedlight run finds the store made
        if "handwritten" in args.parts or "flower" in args.parts:
            rows = compare(args, Path(work), tracking_uri)
        if "ray" in args.parts:
            ray_rows = ray_vs_sequential(args, Path(work), tracking_uri)
    dp_rows = dp_overhead(args) if "dp" in args.parts else []
    loads_after = uptime()
    text = report(args, rows, ray_rows, dp_rows, (loads_before, loads_after))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k != "comparisons"}
    payload = {"command": " ".join(sys.argv[1:]) or "(defaults)", "date": datetime.datetime.now().isoformat(timespec="seconds"),
               "settings": settings, "cpu_count": os.cpu_count(), "uptime_before": loads_before,
               "uptime_after": loads_after, "comparison": rows, "ray": ray_rows, "dp": dp_rows}
    (out / "bench.json").write_text(json.dumps(payload, indent=2))
    (out / "bench.md").write_text(text)
    print(text)
    print(f"wrote {out / 'bench.md'} and {out / 'bench.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(guard(main))
