"""Client tasks on Ray: long-lived worker actors, on one machine or a cluster.

Ray (https://docs.ray.io) is the engine under Flower's simulation and
FL-bench. Per run, the :class:`ClientTrainer` (model, federated data,
settings) goes into Ray's object store once and each worker actor reads
it when it starts; per round, the global parameters go in once. Tasks are
dispatched larger party first to whichever worker is free, and the
outcomes come back in task order, so a round's aggregate does not depend
on which worker ran what.

A worker that dies mid-task (out of memory, killed) is restarted by Ray
and its task run again from the same inputs (``max_restarts`` /
``max_task_retries``): the round's result is the same as without the
death. Hyperparameters: ``workers`` (default: as many as the cluster's
CPUs and GPUs hold at ``worker_cpus`` and ``worker_gpus`` each), ``worker_cpus`` (CPUs per worker, also its torch
threads; 1 by default, as one fit rarely uses more on a small model),
``worker_gpus`` (fractional GPUs per worker), ``address`` (a running
cluster such as ``127.0.0.1:6379`` or ``auto``; without it a local Ray
is started and shut down by fedlight).
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

from fedlight.errors import ConfigError
from fedlight.execution.task import ClientOutcome, ClientTask, ClientTrainer
from fedlight.strategies import Params

# Times Ray restarts a dead worker and reruns its task before the run fails.
MAX_RESTARTS = 3


class _Worker:
    """Holds one copy of the run's trainer and runs tasks on it (a Ray actor)."""

    def __init__(self, trainer: ClientTrainer, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.trainer = trainer

    def pid(self) -> int:
        return os.getpid()

    def run(self, task: ClientTask, global_params: Params) -> ClientOutcome:
        return self.trainer.run(task, global_params)


def ray_init_address(address: str | None) -> str:
    """What ``ray.init`` is given: ``--ray-address``, else ``$RAY_ADDRESS``, else ``"local"`` (a new local Ray).

    Not None: ``ray.init(address=None)`` joins the last cluster that ``ray start`` left running on this machine.
    """
    return address or os.environ.get("RAY_ADDRESS") or "local"


class RayExecutor:
    """Runs the round's tasks on ``workers`` Ray actors (see the module docstring)."""

    name = "ray"

    def __init__(self, *, workers: int | None = None, worker_cpus: float = 1.0, worker_gpus: float = 0.0,
                 address: str | None = None):
        if workers is not None and workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {workers}")
        if worker_cpus <= 0 or worker_gpus < 0:
            raise ConfigError(f"--worker-cpus must be > 0 and --worker-gpus >= 0, got {worker_cpus}, {worker_gpus}")
        self.workers = workers
        self.worker_cpus = worker_cpus
        self.worker_gpus = worker_gpus
        self.address = address
        self.startup_s = 0.0
        self._actors: list[Any] = []
        self._started_ray = False
        self._trainer_ref: Any = None

    def start(self, trainer: ClientTrainer) -> None:
        import ray

        started = time.perf_counter()
        if not ray.is_initialized():
            address = ray_init_address(self.address)
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False,
                         configure_logging=True, logging_level="ERROR")
            except ConnectionError as exc:
                raise ConfigError(f"--ray-address {address}: {exc}") from None
            self._started_ray = True
        available = ray.cluster_resources()
        cpus, gpus = available.get("CPU", 1.0), available.get("GPU", 0.0)
        if self.worker_gpus > gpus:
            raise ConfigError(f"--worker-gpus {self.worker_gpus}: the Ray cluster has {gpus:g} GPUs")
        fit = int(cpus // self.worker_cpus)
        if self.worker_gpus > 0:
            fit = min(fit, int(gpus // self.worker_gpus))
        workers = self.workers or max(1, fit)
        # a worker Ray cannot place would wait for resources forever: refuse instead
        if workers * self.worker_cpus > cpus:
            raise ConfigError(
                f"--workers {workers} x --worker-cpus {self.worker_cpus:g} needs {workers * self.worker_cpus:g} CPUs; "
                f"the Ray cluster has {cpus:g}"
            )
        if workers * self.worker_gpus > gpus:
            raise ConfigError(
                f"--workers {workers} x --worker-gpus {self.worker_gpus:g} needs {workers * self.worker_gpus:g} GPUs; "
                f"the Ray cluster has {gpus:g}"
            )
        # kept for the run: a restarted actor's constructor reads it again, and Ray frees an object with no reference
        self._trainer_ref = trainer_ref = ray.put(trainer)
        actor = ray.remote(_Worker).options(
            num_cpus=self.worker_cpus, num_gpus=self.worker_gpus,
            max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS,
        )
        threads = max(1, math.floor(self.worker_cpus))
        self._actors = [actor.remote(trainer_ref, threads) for _ in range(workers)]
        ray.get([a.pid.remote() for a in self._actors])  # up and holding the trainer before the first round
        self.startup_s = time.perf_counter() - started

    def worker_pids(self) -> list[int]:
        import ray

        return ray.get([a.pid.remote() for a in self._actors])

    def run(self, tasks: list[ClientTask], global_params: Params) -> list[ClientOutcome]:
        import ray

        if not self._actors:
            raise RuntimeError("executor not started")
        params_ref = ray.put(global_params)
        # larger parties first, so that the round does not end waiting on one big fit
        queue = sorted(range(len(tasks)), key=lambda i: (-tasks[i].num_samples, i))
        outcomes: list[ClientOutcome | None] = [None] * len(tasks)
        pending: dict[Any, tuple[int, Any]] = {}
        idle = list(self._actors)
        try:
            while queue or pending:
                while queue and idle:
                    index, actor = queue.pop(0), idle.pop(0)
                    pending[actor.run.remote(tasks[index], params_ref)] = (index, actor)
                done, _ = ray.wait(list(pending), num_returns=1)
                index, actor = pending.pop(done[0])
                outcomes[index] = _get(done[0])
                idle.append(actor)
        finally:
            for ref in pending:
                ray.cancel(ref)
        return outcomes  # type: ignore[return-value]

    def close(self) -> None:
        import ray

        for actor in self._actors:
            ray.kill(actor)
        self._actors = []
        self._trainer_ref = None
        if self._started_ray and ray.is_initialized():
            ray.shutdown()
        self._started_ray = False


def _get(ref: Any) -> ClientOutcome:
    """A task's outcome; an error the task raised (a ConfigError, say) is raised here as itself."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause
        if isinstance(cause, BaseException):
            raise cause from None
        raise
