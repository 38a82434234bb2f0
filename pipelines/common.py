"""Shared machinery for experiment pipelines: a grid of fedlight runs.

Every run is an ordinary MLflow-tracked ``fedlight`` run. Finished runs are
appended to a JSONL file next to the outputs, so an interrupted pipeline
picks up where it stopped when run again. Each recorded run keeps the
configuration it ran with, defaults resolved; a run whose configuration has
changed since (a new default, say) runs again. The record tracks
configuration, not code: after changing what a run computes, delete the
file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fedlight.config import build_config  # noqa: E402
from fedlight.errors import FedlightError  # noqa: E402


@dataclass(frozen=True)
class Job:
    """One run: ``labels`` identify it in tables, ``sections`` is its YAML-shaped config."""

    labels: tuple[tuple[str, Any], ...]
    sections: dict[str, dict[str, Any]] = field(hash=False, compare=False)

    @property
    def key(self) -> str:
        return json.dumps(dict(self.labels), sort_keys=True)


def resolved_config(sections: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What a run's result depends on as configured: the config with defaults filled in.

    Tracking settings are left out, and of the strategy options only those
    the strategy takes, so that a new adaptive default does not make FedAvg
    runs look changed.
    """
    # imported here: it imports torch and Lightning, and a pipeline checks its arguments first
    from fedlight.strategies import strategy_options

    config = build_config(sections).to_dict()
    del config["tracking"]
    strategy = config["strategy"]
    accepted = strategy_options(strategy["name"])
    config["strategy"] = {"name": strategy["name"], **{k: v for k, v in strategy.items() if k in accepted}}
    return json.loads(json.dumps(config, sort_keys=True))


def _run_job(sections: dict[str, dict[str, Any]], threads: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    from fedlight.experiment import run_experiment
    from fedlight.interrupts import terminate_as_interrupt

    with terminate_as_interrupt():  # a killed worker ends its MLflow run KILLED
        summary = run_experiment(build_config(sections), progress=False)
    alphas: dict[str, float] = {}
    for row in summary["history"]:
        alphas.update({k.removeprefix("alpha/"): v for k, v in row.items() if k.startswith("alpha/")})
    return {"run_id": summary["run_id"], "final": summary["final"], "wall_time_s": summary["wall_time_s"],
            "privacy": summary.get("privacy"),
            # each party's last alpha, for federations small enough to tabulate them
            "final_alphas": alphas if len(alphas) <= 16 else None,
            "history": [{k: v for k, v in row.items() if not k.startswith("alpha/")} for row in summary["history"]]}


def run_grid(jobs: Sequence[Job], *, results_path: Path, workers: int = 1) -> dict[str, dict[str, Any]]:
    """Run the jobs not yet in ``results_path`` with their current configuration; return key -> result for all jobs."""
    # every config is valid before anything runs or is written
    configs = {job.key: resolved_config(job.sections) for job in jobs}
    results_path.parent.mkdir(parents=True, exist_ok=True)
    done: dict[str, dict[str, Any]] = {}
    if results_path.exists():
        for line in results_path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                done[row["key"]] = row
    changed = {job.key for job in jobs if job.key in done and done[job.key].get("config") != configs[job.key]}
    todo = [job for job in jobs if job.key not in done or job.key in changed]
    print(f"{len(jobs) - len(todo)} of {len(jobs)} runs already done; running {len(todo)} with {workers} worker(s)"
          + (f", {len(changed)} of them recorded with another configuration" if changed else ""), flush=True)
    threads = max(1, (os.cpu_count() or 1) // workers)

    def record(job: Job, result: dict[str, Any]) -> None:
        row = {"key": job.key, "labels": dict(job.labels), "config": configs[job.key], **result}
        done[job.key] = row
        with results_path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        acc = result["final"]["accuracy"]
        print(f"  {dict(job.labels)} accuracy={acc:.4f} ({result['wall_time_s']:.0f}s) run={result['run_id']}", flush=True)

    if workers <= 1 or len(todo) <= 1:
        for job in todo:
            record(job, _run_job(job.sections, threads))
    else:
        from fedlight.tracking import prepare_tracking_store

        experiments_by_store: dict[str | None, set[str]] = {}
        for job in todo:
            tracking = job.sections["tracking"]
            experiments_by_store.setdefault(tracking.get("tracking_uri"), set()).add(tracking["experiment"])
        for uri, experiments in experiments_by_store.items():
            prepare_tracking_store(uri, experiments)
        from fedlight.interrupts import terminate_as_interrupt

        failures: list[str] = []
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))
        try:
            with terminate_as_interrupt():  # a killed pipeline stops its workers too (below), not only itself
                futures = {pool.submit(_run_job, job.sections, threads): job for job in todo}
                # record each run as it finishes, so that one failure loses no finished run
                for future in as_completed(futures):
                    if future.cancelled():
                        continue
                    job = futures[future]
                    try:
                        record(job, future.result())
                    except Exception as exc:  # noqa: BLE001 - reported below with the job that failed
                        failures.append(f"{dict(job.labels)}: {type(exc).__name__}: {exc}")
                        for pending in futures:
                            pending.cancel()
        except BaseException:
            # Ctrl-C or SIGTERM: SIGTERM each worker (its MLflow run ends KILLED) rather than wait for its run
            # to finish unrecorded, as leaving the pool's block would; Python 3.11 has no public call for it
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                process.terminate()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        if failures:
            raise FedlightError(f"{len(failures)} run(s) failed, finished runs are kept in {results_path}: {failures[0]}")
    return {job.key: done[job.key] for job in jobs}


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    arr = np.asarray(list(values), dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def fail(message: str) -> int:
    print(f"pipeline: error: {message}", file=sys.stderr)
    return 2


def guard(main) -> int:
    """Run a pipeline's main with the CLI's rule: user errors are one line and exit 2."""
    try:
        return main()
    except FedlightError as exc:
        return fail(str(exc))


def log_summary_run(*, experiment: str, tracking_uri: str | None, run_name: str, files: Sequence[Path],
                    params: dict[str, Any] | None = None) -> str:
    """An MLflow run holding a pipeline's outputs (tables, plots) next to its per-configuration runs."""
    import mlflow

    from fedlight.tracking import resolve_tracking_uri

    mlflow.set_tracking_uri(resolve_tracking_uri(tracking_uri))
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_name, tags={"pipeline_summary": "yes"}) as run:
        if params:
            mlflow.log_params({k: str(v) for k, v in params.items()})
        for path in files:
            mlflow.log_artifact(str(path))
    return run.info.run_id


def write_table(out: Path, text: str, rows: list[dict[str, Any]]) -> list[Path]:
    """Write ``table.md`` and ``table.csv`` under ``out``; return their paths."""
    import csv

    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text)
    with (out / "table.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return [out / "table.md", out / "table.csv"]


QUICK_LOCAL_STEPS = 5  # a smoke test checks the plumbing: a whole local epoch at batch 10 is tens of steps


def pipeline_parser(doc: str, *, name: str, seeds: Sequence[int] = (0, 1, 2)) -> argparse.ArgumentParser:
    """The options every FEMNIST pipeline shares; ``--quick`` shrinks a run to a smoke test."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "femnist"))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(seeds))
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--clients-per-round", type=int, default=10)
    parser.add_argument("--num-clients", type=int, default=None, help="a subset of the writers (default: all)")
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--workers", type=int, default=1, help="parallel runs (each gets cores / workers threads)")
    parser.add_argument("--experiment", default=name.replace("_", "-"))
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--out", default=str(REPO / "pipelines" / "results" / name))
    parser.add_argument("--quick", action="store_true",
                        help=f"3 rounds, 12 writers, 1 seed, at most {QUICK_LOCAL_STEPS} local steps a fit (for tests)")
    return parser


def parse_pipeline_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.rounds, args.clients_per_round, args.num_clients, args.eval_every = [0], 3, 4, 12, 1
        args.local_steps = QUICK_LOCAL_STEPS
    if not Path(args.data_dir).is_dir():
        raise FedlightError(f"data directory not found: {args.data_dir}")
    return args


def run_sections(args: argparse.Namespace, *, data: dict[str, Any], strategy: str, seed: int, run_name: str,
                 lr: float = 0.1, momentum: float = 0.0, privacy: dict[str, Any] | None = None,
                 strategy_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """A FEMNIST run config with the pipelines' shared training settings (small CNN, batch 10, 1 local epoch)."""
    data = {"dataset": "femnist", "data_dir": args.data_dir, "partition": "natural", **data}
    if args.num_clients and "num_clients" not in data:
        data["num_clients"] = args.num_clients
    sections = {
        "data": data,
        "training": {"model": "small_cnn", "rounds": args.rounds, "clients_per_round": args.clients_per_round,
                     "local_epochs": 1, "batch_size": 10, "lr": lr, "momentum": momentum, "eval_every": args.eval_every,
                     "seed": seed},
        "strategy": {"name": strategy, **(strategy_options or {})},
        "tracking": {"experiment": args.experiment, "tracking_uri": args.tracking_uri, "registered_model": None,
                     "run_name": run_name},
    }
    if getattr(args, "local_steps", None):  # --quick; a full run's config (and its runs.jsonl key) is unchanged
        sections["training"]["local_steps"] = args.local_steps
    if privacy is not None:
        sections["privacy"] = privacy
    return sections


def finish(args: argparse.Namespace, out: Path, text: str, rows: list[dict[str, Any]], extra_files: Sequence[Path] = ()) -> int:
    """Write the table, log it (and any figures) to an MLflow summary run, print it."""
    files = write_table(out, text, rows) + list(extra_files)
    log_summary_run(experiment=args.experiment, tracking_uri=args.tracking_uri, run_name=f"{out.name}-summary",
                    files=files, params={"command": " ".join(sys.argv[1:]) or "(defaults)"})
    print(text)
    print(f"wrote {out / 'table.md'} and {out / 'table.csv'}")
    return 0
