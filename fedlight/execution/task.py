"""A client's local training as a pure task.

The driver (:class:`~fedlight.loop.FederatedLoop`) turns each sampled
party's plan into a :class:`ClientTask`: the client id, the round, the
seeds, the plan's callbacks and the party's stored state the task needs.
A :class:`ClientTrainer` (the run's constant part: a model to train in,
the federated data, the training settings) runs the task from the global
parameters and returns a :class:`ClientOutcome`: the result or the
failure, and the state updates the party keeps for its next round. Only
the driver writes those to the state store, so the same task runs in
process, on a Ray worker or on another node (:mod:`fedlight.execution`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from fedlight.client import STATE_UPDATES, ClientModule, LossTerm, TrainLossRecorder, fit_client, make_loader
from fedlight.data import FederatedData
from fedlight.errors import ConfigError
from fedlight.metrics import loss_and_accuracy
from fedlight.models import is_lightning_module, model_name
from fedlight.privacy import DPSGDSettings, dp_sgd_fit
from fedlight.strategies import ClientFailure, ClientPlan, ClientResult, Params

# What a party's failure looks like: its fit raised one of these (diverged,
# a shape it cannot train, ...). Anything else (a ConfigError, a bug) stops the run.
CLIENT_ERRORS = (RuntimeError, ValueError, FloatingPointError)


@dataclass(frozen=True)
class TrainingSettings:
    """What every client fit of a run shares (picklable: it travels to the workers once)."""

    local_epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.0
    local_steps: int | None = None
    # auto, cpu or gpu; auto is resolved where the task runs (a CPU driver may have GPU workers)
    accelerator: str = "cpu"
    dp: DPSGDSettings | None = None


@dataclass
class ClientTask:
    """One sampled party's work in one round."""

    client_id: int
    server_round: int
    seed: int  # seeds the party's batch order and torch's generator for the fit
    plan: ClientPlan
    # the party's stored values this task reads (e.g. its DP accountant), loaded by the driver
    client_state: dict[str, Any] = field(default_factory=dict)
    noise_multiplier: float | None = None  # DP-SGD's, fixed per party before training
    num_samples: int = 0  # the party's training rows: executors dispatch larger tasks first


@dataclass
class ClientOutcome:
    """A task's answer: exactly one of ``result`` and ``failure``, plus the party's state updates."""

    client_id: int
    result: ClientResult | None = None
    failure: ClientFailure | None = None
    state_updates: dict[str, Any] = field(default_factory=dict)


def task_seed(seed: int, server_round: int, client_id: int) -> int:
    """The seed of one party's fit in one round (the same wherever the task runs)."""
    return int(np.random.SeedSequence([seed, server_round, client_id]).generate_state(1)[0])


def seed_torch(seed: int, *, accelerator: str) -> None:
    """Seed torch's global generators for one client fit on ``accelerator`` (``"cpu"`` or ``"gpu"``).

    ``torch.manual_seed`` also queues the seed for each accelerator that is
    not initialised yet (CUDA, XPU, MTIA), capturing the caller's stack each
    time: 0.2 ms a call here, once per client fit. A CPU fit draws only from
    the CPU generator, which both calls seed alike; a GPU fit seeds them all.
    """
    if accelerator == "cpu":
        torch.default_generator.manual_seed(seed)
    else:
        torch.manual_seed(seed)


class ClientTrainer:
    """Runs :class:`ClientTask` s: the run's model (a private copy to train in), data and settings."""

    def __init__(self, *, model: nn.Module, data: FederatedData, settings: TrainingSettings):
        self.model = copy.deepcopy(model)
        self.data = data
        self.settings = settings

    def run(self, task: ClientTask, global_params: Params, *, raise_errors: bool = False) -> ClientOutcome:
        """Fit the task's party from ``global_params``; a client error becomes a failure unless ``raise_errors``."""
        updates: dict[str, Any] = {}
        try:
            result = self._fit(task, global_params, updates)
        except CLIENT_ERRORS as exc:
            if raise_errors:
                raise
            # privacy already spent by a failed DP fit stays spent: its accountant update is kept
            kept = {k: v for k, v in updates.items() if k in ("dp_accountant", "dp_epsilon")}
            return ClientOutcome(task.client_id, failure=ClientFailure(task.client_id, f"{type(exc).__name__}: {exc}"),
                                 state_updates=kept)
        updates.update(result.extras.pop(STATE_UPDATES, {}))
        return ClientOutcome(task.client_id, result=result, state_updates=updates)

    def _fit(self, task: ClientTask, global_params: Params, updates: dict[str, Any]) -> ClientResult:
        s, plan = self.settings, task.plan
        client = self.data.clients[task.client_id]
        accelerator = s.accelerator
        if accelerator == "auto":
            accelerator = "gpu" if torch.cuda.is_available() else "cpu"
        seed_torch(task.seed, accelerator=accelerator)  # dropout and the like: the same draws on any worker
        self.model.load_state_dict(global_params)
        user_module = is_lightning_module(self.model)
        module = self.model if user_module else ClientModule(self.model, lr=s.lr, momentum=s.momentum)
        loader = make_loader(client.train_x, client.train_y, batch_size=s.batch_size, seed=task.seed)
        fit = dict(epochs=s.local_epochs, max_steps=s.local_steps, accelerator=accelerator)
        if user_module:
            name = model_name(self.model)
            if s.dp is not None:
                raise ConfigError(f"sample-level DP (DP-SGD) needs fedlight's training step; {name} is a LightningModule with its own")
            terms = [type(cb).__name__ for cb in plan.callbacks if isinstance(cb, LossTerm)]
            if terms:
                raise ConfigError(f"{', '.join(terms)} adds to fedlight's loss; {name} is a LightningModule with its own training_step")
            recorder = TrainLossRecorder()
            steps = fit_client(module, loader, callbacks=[*plan.callbacks, recorder], **fit)
            if recorder.batches == 0 and steps > 0:
                raise ConfigError(f"{name}.training_step must return the loss (a tensor, or a dict with 'loss')")
            train_loss, report = recorder.mean_train_loss, recorder.report
        elif s.dp is None:
            steps = fit_client(module, loader, callbacks=plan.callbacks, **fit)
            train_loss, report = module.mean_train_loss, module.report
        else:
            with dp_sgd_fit(module, loader, settings=s.dp, noise_multiplier=task.noise_multiplier,
                            accountant_state=task.client_state.get("dp_accountant"), server_round=task.server_round,
                            client_id=task.client_id, updates=updates) as dp_loader:
                steps = fit_client(module, dp_loader, callbacks=plan.callbacks, **fit)
            train_loss, report = module.mean_train_loss, module.report
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"local training diverged (loss {train_loss})")
        self.model.cpu()
        val_loss, val_accuracy = loss_and_accuracy(self.model, client.val_x, client.val_y)
        return ClientResult(
            client_id=task.client_id,
            num_samples=client.num_train,
            params={k: v.detach().clone() for k, v in self.model.state_dict().items()},
            num_steps=steps,
            train_loss=train_loss,
            val_loss=val_loss,
            val_accuracy=val_accuracy,
            extras=report,
        )
