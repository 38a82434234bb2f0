"""The default executor: the round's tasks one after another in the driver's process."""

from __future__ import annotations

from fedlight.execution.task import ClientOutcome, ClientTask, ClientTrainer
from fedlight.strategies import Params


class SequentialExecutor:
    """Runs each task in process, in task order (today's path; no start-up cost)."""

    name = "sequential"

    def __init__(self) -> None:
        self.trainer: ClientTrainer | None = None
        self.startup_s = 0.0

    def start(self, trainer: ClientTrainer) -> None:
        self.trainer = trainer

    def run(self, tasks: list[ClientTask], global_params: Params) -> list[ClientOutcome]:
        if self.trainer is None:
            raise RuntimeError("executor not started")
        return [self.trainer.run(task, global_params) for task in tasks]

    def close(self) -> None:
        self.trainer = None
