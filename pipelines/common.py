"""Shared machinery for experiment pipelines: a grid of fedlight runs.

Every run is an ordinary MLflow-tracked ``fedlight`` run. Finished runs are
appended to a JSONL file next to the outputs, so an interrupted pipeline
picks up where it stopped when run again.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
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


def _run_job(sections: dict[str, dict[str, Any]], threads: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    from fedlight.experiment import run_experiment

    summary = run_experiment(build_config(sections), progress=False)
    return {"run_id": summary["run_id"], "final": summary["final"], "wall_time_s": summary["wall_time_s"],
            "privacy": summary.get("privacy"),
            "history": [{k: v for k, v in row.items() if not k.startswith("alpha/")} for row in summary["history"]]}


def run_grid(jobs: Sequence[Job], *, results_path: Path, workers: int = 1) -> dict[str, dict[str, Any]]:
    """Run the jobs not yet in ``results_path``; return key -> result for all jobs."""
    results_path.parent.mkdir(parents=True, exist_ok=True)
    done: dict[str, dict[str, Any]] = {}
    if results_path.exists():
        for line in results_path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                done[row["key"]] = row
    todo = [job for job in jobs if job.key not in done]
    for job in jobs:
        build_config(job.sections)  # every config is valid before anything runs
    print(f"{len(jobs) - len(todo)} of {len(jobs)} runs already done; running {len(todo)} with {workers} worker(s)", flush=True)
    threads = max(1, (os.cpu_count() or 1) // workers)

    def record(job: Job, result: dict[str, Any]) -> None:
        row = {"key": job.key, "labels": dict(job.labels), **result}
        done[job.key] = row
        with results_path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        acc = result["final"]["accuracy"]
        print(f"  {dict(job.labels)} accuracy={acc:.4f} ({result['wall_time_s']:.0f}s) run={result['run_id']}", flush=True)

    if workers <= 1:
        for job in todo:
            record(job, _run_job(job.sections, threads))
    else:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            futures = [(job, pool.submit(_run_job, job.sections, threads)) for job in todo]
            for job, future in futures:
                record(job, future.result())
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
