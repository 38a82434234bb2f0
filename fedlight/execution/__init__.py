"""Where client tasks run: in process (``sequential``) or on Ray workers (``ray``).

An executor takes the run's :class:`ClientTrainer` once (:meth:`start`),
then each round's tasks with the global parameters, and returns their
outcomes in task order (:meth:`run`); :meth:`close` releases what it
started. Both run the same task function, :meth:`ClientTrainer.run`.
"""

from __future__ import annotations

from typing import Any, Protocol

from fedlight.errors import ConfigError
from fedlight.execution.sequential import SequentialExecutor
from fedlight.execution.task import (
    CLIENT_ERRORS,
    ClientOutcome,
    ClientTask,
    ClientTrainer,
    TrainingSettings,
    task_seed,
)
from fedlight.strategies import Params


class ClientExecutor(Protocol):
    name: str
    startup_s: float

    def start(self, trainer: ClientTrainer) -> None: ...

    def run(self, tasks: list[ClientTask], global_params: Params) -> list[ClientOutcome]: ...

    def close(self) -> None: ...


def build_executor(name: str, **options: Any) -> ClientExecutor:
    """``sequential`` (no options) or ``ray`` (workers, worker_cpus, worker_gpus, address)."""
    if name == "sequential":
        return SequentialExecutor()
    if name == "ray":
        from fedlight.execution.ray_executor import RayExecutor

        return RayExecutor(**options)
    raise ConfigError(f"--executor {name!r}: choose from {', '.join(EXECUTOR_NAMES)}")


EXECUTOR_NAMES = ("sequential", "ray")

__all__ = [
    "CLIENT_ERRORS", "EXECUTOR_NAMES", "ClientExecutor", "ClientOutcome", "ClientTask", "ClientTrainer",
    "SequentialExecutor", "TrainingSettings", "build_executor", "task_seed",
]
