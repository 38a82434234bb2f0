"""The federated loop: rounds, client sampling, local training, aggregation, evaluation."""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from fedlight.client import ClientModule, LossTerm, TrainLossRecorder, fit_client, make_loader
from fedlight.data import FederatedData
from fedlight.errors import ConfigError
from fedlight.metrics import classification_metrics, loss_and_accuracy, predict_logits
from fedlight.models import is_lightning_module, model_name
from fedlight.privacy import SampleLevelDP
from fedlight.state import ClientStateStore
from fedlight.strategies import ClientFailure, ClientPlan, ClientResult, Params, Strategy

CLIENT_SAMPLING = ("fixed", "poisson")
PARTY_METRICS_MAX = 16


class RoundListener(Protocol):
    """Anything that wants each round's metrics (MLflow, Optuna pruning, progress)."""

    def on_round_end(self, server_round: int, metrics: dict[str, float]) -> None: ...


class ProgressReporter:
    """A tqdm bar over rounds on a terminal, one line per round otherwise."""

    def __init__(self, total_rounds: int, stream=None):
        self.stream = stream or sys.stderr
        self.total = total_rounds
        self._bar = None
        if self.stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total_rounds, unit="round", file=self.stream, dynamic_ncols=True)

    def on_round_end(self, server_round: int, metrics: dict[str, float]) -> None:
        shown = {k: metrics[k] for k in ("train_loss", "test_loss", "test_accuracy") if k in metrics}
        if self._bar is not None:
            self._bar.set_postfix({k: f"{v:.4f}" for k, v in shown.items()}, refresh=False)
            self._bar.update(server_round - self._bar.n)
            if server_round >= self.total:
                self._bar.close()
        else:
            text = " ".join(f"{k}={v:.4f}" for k, v in shown.items())
            print(f"round {server_round}/{self.total} {text}", file=self.stream, flush=True)


class FederatedLoop:
    """Owns the global model and runs federated rounds.

    Each round samples clients (seeded by ``seed`` and the round number, so
    a resumed run samples the same clients), trains each on a fresh
    Lightning Trainer with the callbacks its strategy plans, and aggregates.
    ``client_sampling`` is ``"fixed"`` (exactly ``clients_per_round`` parties
    without replacement) or ``"poisson"`` (each party independently with
    probability ``clients_per_round / N``, so a round may have none: the
    sampling that client-level DP's accountant assumes). The test set is
    evaluated every ``eval_every`` rounds and after the last round.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        data: FederatedData,
        strategy: Strategy,
        rounds: int,
        clients_per_round: int,
        local_epochs: int,
        batch_size: int,
        lr: float,
        momentum: float = 0.0,
        eval_every: int = 1,
        seed: int = 0,
        store: ClientStateStore | None = None,
        listeners: Sequence[RoundListener] = (),
        privacy: SampleLevelDP | None = None,
        client_sampling: str = "fixed",
        local_steps: int | None = None,
    ):
        if client_sampling not in CLIENT_SAMPLING:
            raise ConfigError(f"client sampling {client_sampling!r}: choose from {', '.join(CLIENT_SAMPLING)}")
        if clients_per_round > len(data.clients):
            raise ConfigError(
                f"--clients-per-round {clients_per_round} exceeds the {len(data.clients)} clients"
            )
        self.model = model
        self.data = data
        self.strategy = strategy
        self.rounds = rounds
        self.clients_per_round = clients_per_round
        self.local_epochs = local_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.momentum = momentum
        self.eval_every = eval_every
        self.seed = seed
        self.store = store if store is not None else ClientStateStore()
        self.listeners = list(listeners)
        self.privacy = privacy
        self.client_sampling = client_sampling
        self.local_steps = local_steps
        self.server_round = 0
        self.history: list[dict[str, float]] = []
        # One reusable local copy: clients train one after another.
        self._local_model = copy.deepcopy(model)
        self.strategy.setup(global_params=self.global_params(), store=self.store, num_clients=len(data.clients))

    def global_params(self) -> Params:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def sample_clients(self, server_round: int) -> list[int]:
        rng = np.random.default_rng([self.seed, 7919, server_round])
        num_clients = len(self.data.clients)
        if self.client_sampling == "poisson":
            chosen = np.flatnonzero(rng.random(num_clients) < self.clients_per_round / num_clients)
        else:
            chosen = rng.choice(num_clients, size=self.clients_per_round, replace=False)
        return sorted(int(c) for c in chosen)

    def train_client(self, plan: ClientPlan, global_params: Params, server_round: int) -> ClientResult:
        """Fit one client from ``global_params`` and return its result.

        A plain ``nn.Module`` trains inside a :class:`ClientModule`
        (cross-entropy, the loop's SGD, the plan's loss terms, DP-SGD when
        ``privacy`` is set); a user's own LightningModule trains as it is,
        with its ``training_step`` and ``configure_optimizers``
        (:mod:`fedlight.compat` lists what it supports). With
        ``local_steps`` set, each fit takes that many optimizer steps
        instead of ``local_epochs`` epochs.
        """
        client = self.data.clients[plan.client_id]
        local_steps = self.local_steps
        self._local_model.load_state_dict(global_params)
        user_module = is_lightning_module(self._local_model)
        module = self._local_model if user_module else ClientModule(self._local_model, lr=self.lr, momentum=self.momentum)
        loader = make_loader(
            client.train_x,
            client.train_y,
            batch_size=self.batch_size,
            seed=int(np.random.SeedSequence([self.seed, server_round, plan.client_id]).generate_state(1)[0]),
        )
        if user_module:
            name = model_name(self._local_model)
            if self.privacy is not None:
                raise ConfigError(f"sample-level DP (DP-SGD) needs fedlight's training step; {name} is a LightningModule with its own")
            terms = [type(cb).__name__ for cb in plan.callbacks if isinstance(cb, LossTerm)]
            if terms:
                raise ConfigError(f"{', '.join(terms)} adds to fedlight's loss; {name} is a LightningModule with its own training_step")
            recorder = TrainLossRecorder()
            steps = fit_client(module, loader, epochs=self.local_epochs, max_steps=local_steps, callbacks=[*plan.callbacks, recorder])
            if recorder.batches == 0 and steps > 0:
                raise ConfigError(f"{name}.training_step must return the loss (a tensor, or a dict with 'loss')")
            train_loss, report = recorder.mean_train_loss, recorder.report
        elif self.privacy is None:
            steps = fit_client(module, loader, epochs=self.local_epochs, max_steps=local_steps, callbacks=plan.callbacks)
            train_loss, report = module.mean_train_loss, module.report
        else:
            with self.privacy.private_fit(plan.client_id, module, loader, server_round=server_round) as dp_loader:
                steps = fit_client(module, dp_loader, epochs=self.local_epochs, max_steps=local_steps, callbacks=plan.callbacks)
            train_loss, report = module.mean_train_loss, module.report
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"local training diverged (loss {train_loss})")
        val_loss, val_accuracy = loss_and_accuracy(self._local_model, client.val_x, client.val_y)
        return ClientResult(
            client_id=plan.client_id,
            num_samples=client.num_train,
            params={k: v.detach().clone() for k, v in self._local_model.state_dict().items()},
            num_steps=steps,
            train_loss=train_loss,
            val_loss=val_loss,
            val_accuracy=val_accuracy,
            extras=report,
        )

    def evaluate(self) -> dict[str, float]:
        """Metrics of the global model on the pooled test set, per domain and per party.

        Where test rows belong to parties (``data.test_client``), each party's
        accuracy on its own test rows and their unweighted mean and minimum
        (``party_mean_accuracy``: FLamby's cross-silo metric); the parties'
        own accuracies are listed (``accuracy_party/<name>``) for federations
        of at most :data:`PARTY_METRICS_MAX` parties.
        """
        logits = predict_logits(self.model, self.data.test_x)
        metrics = classification_metrics(logits, self.data.test_y, self.data.num_classes)
        if self.data.test_client is not None:
            correct = (logits.argmax(1) == self.data.test_y).double()
            accuracies = {}
            for cid in torch.unique(self.data.test_client).tolist():
                if cid >= 0:
                    accuracies[self.data.clients[cid].name] = float(correct[self.data.test_client == cid].mean())
            if accuracies:
                metrics["party_mean_accuracy"] = float(np.mean(list(accuracies.values())))
                metrics["party_min_accuracy"] = min(accuracies.values())
                if len(accuracies) <= PARTY_METRICS_MAX:
                    metrics.update({f"accuracy_party/{name}": a for name, a in accuracies.items()})
        if self.data.test_domain is not None:
            for index, name in enumerate(self.data.domain_names):
                rows = self.data.test_domain == index
                if bool(rows.any()):
                    _, accuracy = loss_and_accuracy(self.model, self.data.test_x[rows], self.data.test_y[rows])
                    metrics[f"accuracy_{name}"] = accuracy
        return metrics

    def run_round(self, server_round: int) -> dict[str, float]:
        started = time.perf_counter()
        global_params = self.global_params()
        plans = self.strategy.configure_round(server_round, self.sample_clients(server_round), global_params)
        results: list[ClientResult] = []
        failures: list[ClientFailure] = []
        for plan in plans:
            try:
                results.append(self.train_client(plan, global_params, server_round))
            except (RuntimeError, ValueError, FloatingPointError) as exc:
                failures.append(ClientFailure(plan.client_id, f"{type(exc).__name__}: {exc}"))
        new_params = self.strategy.aggregate(server_round, global_params, results, failures)
        self.model.load_state_dict(new_params)
        metrics: dict[str, float] = {"clients_ok": len(results), "clients_failed": len(failures)}
        if results:
            sizes = np.array([r.num_samples for r in results], dtype=float)
            metrics["train_loss"] = float(np.average([r.train_loss for r in results], weights=sizes))
            val = [(r.val_loss, r.val_accuracy, n) for r, n in zip(results, sizes) if r.val_loss is not None and math.isfinite(r.val_loss)]
            if val:
                metrics["client_val_loss"] = float(np.average([v[0] for v in val], weights=[v[2] for v in val]))
                metrics["client_val_accuracy"] = float(np.average([v[1] for v in val], weights=[v[2] for v in val]))
        metrics.update(self.strategy.round_metrics())
        metrics.update(self.strategy.averager.round_metrics())
        if self.privacy is not None:
            metrics.update(self.privacy.round_metrics())
        if server_round % self.eval_every == 0 or server_round == self.rounds:
            metrics.update({f"test_{k}": v for k, v in self.evaluate().items()})
        metrics["round_time_s"] = time.perf_counter() - started
        return metrics

    def run(self) -> list[dict[str, float]]:
        """Run the remaining rounds (all of them, unless restored from a checkpoint)."""
        for server_round in range(self.server_round + 1, self.rounds + 1):
            metrics = self.run_round(server_round)
            self.server_round = server_round
            self.history.append({"round": server_round, **metrics})
            for listener in self.listeners:
                listener.on_round_end(server_round, metrics)
        return self.history

    def final_metrics(self) -> dict[str, float]:
        """The last evaluated test metrics, without the ``test_`` prefix."""
        for row in reversed(self.history):
            if "test_accuracy" in row:
                return {k.removeprefix("test_"): v for k, v in row.items() if k.startswith("test_")}
        return self.evaluate()

    def state_dict(self) -> dict[str, Any]:
        return {
            "server_round": self.server_round,
            "global_params": self.global_params(),
            "strategy": self.strategy.state_dict(),
            "averager": self.strategy.averager.state_dict(),
            "privacy": self.privacy.state_dict() if self.privacy is not None else None,
            "store": self.store.state_dict(),
            "history": copy.deepcopy(self.history),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.server_round = int(state["server_round"])
        self.model.load_state_dict(state["global_params"])
        self.strategy.load_state_dict(state["strategy"])
        self.strategy.averager.load_state_dict(state["averager"])
        if self.privacy is not None:
            self.privacy.load_state_dict(state["privacy"])
        self.store.load_state_dict(state["store"])
        self.history = copy.deepcopy(state["history"])

    def save_checkpoint(self, directory: str | Path) -> Path:
        """Write the loop's state and a copy of the client store's files to ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = self.state_dict()
        state["store"] = self.store.snapshot(directory / "clients")
        path = directory / "loop.pt"
        torch.save(state, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)
        return path

    def load_checkpoint(self, directory: str | Path) -> None:
        path = Path(directory) / "loop.pt"
        if not path.is_file():
            raise ConfigError(f"no checkpoint at {path}")
        self.load_state_dict(torch.load(path, weights_only=False))
