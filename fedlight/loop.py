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

from fedlight.checkpoints import capture_rng_state, restore_rng_state
from fedlight.data import FederatedData
from fedlight.errors import ConfigError
from fedlight.execution import ClientExecutor, ClientOutcome, ClientTask, ClientTrainer, TrainingSettings, task_seed
from fedlight.execution.sequential import SequentialExecutor
from fedlight.faults import RoundFaults
from fedlight.metrics import classification_metrics, predict_logits
from fedlight.privacy import SampleLevelDP
from fedlight.state import ClientStateStore
from fedlight.strategies import ClientFailure, ClientPlan, ClientResult, Params, Strategy

CLIENT_SAMPLING = ("fixed", "poisson")
ACCELERATORS = ("auto", "cpu", "gpu")
PARTY_METRICS_MAX = 16


def resolve_accelerator(accelerator: str) -> torch.device:
    """``auto`` is the GPU when torch sees one, else the CPU; ``gpu`` without one is a ConfigError."""
    if accelerator not in ACCELERATORS:
        raise ConfigError(f"--accelerator {accelerator!r}: choose from {', '.join(ACCELERATORS)}")
    if accelerator == "gpu" and not torch.cuda.is_available():
        raise ConfigError("--accelerator gpu: torch sees no CUDA GPU on this machine (use cpu or auto)")
    if accelerator == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


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

    Client training runs as pure tasks on an ``executor``
    (:mod:`fedlight.execution`; sequential by default): the loop hands it
    the round's tasks and applies the state updates that come back to the
    store, which only the loop writes. A round with fewer than
    ``min_clients`` results is not aggregated: the strategy's :meth:`keep`
    of the global model (unchanged, or under client-level DP the noise-only
    release its accountant counts on) and ``round_skipped`` 1.
    ``accelerator`` (``auto``, ``cpu``, ``gpu``) places client fits and
    the server's evaluation.
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
        executor: ClientExecutor | None = None,
        min_clients: int = 1,
        accelerator: str = "cpu",
        faults: RoundFaults | None = None,
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
        self.executor = executor if executor is not None else SequentialExecutor()
        self.min_clients = min_clients
        # every round: the non-finite screen; injected faults and an attack when given (fedlight.faults)
        self.faults = faults if faults is not None else RoundFaults()
        self.accelerator = accelerator
        self.device = resolve_accelerator(accelerator)  # the server's evaluation; each task resolves its own
        self.server_round = 0
        self.history: list[dict[str, float]] = []
        self._trainer: ClientTrainer | None = None  # the run's constant part of every task, made at the first round
        self._executor_started = False
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

    def client_trainer(self) -> ClientTrainer:
        """What every client task of this run shares: a copy of the model, the data, the settings."""
        if self._trainer is None:
            settings = TrainingSettings(
                local_epochs=self.local_epochs, batch_size=self.batch_size, lr=self.lr, momentum=self.momentum,
                local_steps=self.local_steps, accelerator=self.accelerator,
                dp=self.privacy.settings if self.privacy is not None else None,
            )
            self._trainer = ClientTrainer(model=self.model, data=self.data, settings=settings)
        return self._trainer

    def make_task(self, plan: ClientPlan, server_round: int) -> ClientTask:
        """The plan of one party as a task: its seeds and the stored state its fit reads."""
        cid = plan.client_id
        state_keys = self.privacy.state_keys if self.privacy is not None else ()
        return ClientTask(
            client_id=cid,
            server_round=server_round,
            seed=task_seed(self.seed, server_round, cid),
            plan=plan,
            client_state={key: self.store.get(cid, key) for key in state_keys},
            noise_multiplier=self.privacy.noise_for(cid) if self.privacy is not None else None,
            num_samples=self.data.clients[cid].num_train,
        )

    def apply_outcome(self, outcome: ClientOutcome) -> None:
        """Write a task's state updates to the store (the driver's job alone)."""
        for key, value in outcome.state_updates.items():
            self.store.put(outcome.client_id, key, value)
        if self.privacy is not None:
            self.privacy.record(outcome.client_id, outcome.state_updates)

    def train_client(self, plan: ClientPlan, global_params: Params, server_round: int) -> ClientResult:
        """Fit one client in process from ``global_params`` and return its result (errors raise).

        A plain ``nn.Module`` trains inside a :class:`ClientModule`
        (cross-entropy, the loop's SGD, the plan's loss terms, DP-SGD when
        ``privacy`` is set); a user's own LightningModule trains as it is,
        with its ``training_step`` and ``configure_optimizers``
        (:mod:`fedlight.compat` lists what it supports). With
        ``local_steps`` set, each fit takes that many optimizer steps
        instead of ``local_epochs`` epochs.
        """
        outcome = self.client_trainer().run(self.make_task(plan, server_round), global_params, raise_errors=True)
        self.apply_outcome(outcome)
        return outcome.result

    def _start_executor(self) -> None:
        if not self._executor_started:
            self.executor.start(self.client_trainer())
            self._executor_started = True

    def close(self) -> None:
        """Release the executor's workers (a later round starts them again)."""
        if self._executor_started:
            self.executor.close()
            self._executor_started = False

    def evaluate(self) -> dict[str, float]:
        """Metrics of the global model on the pooled test set, per domain and per party.

        Where test rows belong to parties (``data.test_client``), each party's
        accuracy on its own test rows and their unweighted mean and minimum
        (``party_mean_accuracy``: FLamby's cross-silo metric); the parties'
        own accuracies are listed (``accuracy_party/<name>``) for federations
        of at most :data:`PARTY_METRICS_MAX` parties.
        """
        logits = self._predict(self.data.test_x)
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
                    metrics[f"accuracy_{name}"] = float((logits[rows].argmax(1) == self.data.test_y[rows]).float().mean())
        return metrics

    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        """The global model's logits for ``x``, computed on the loop's device, returned on the CPU."""
        if self.device.type == "cpu":
            return predict_logits(self.model, x)
        try:
            return predict_logits(self.model.to(self.device), x.to(self.device)).cpu()
        finally:
            self.model.cpu()

    def run_round(self, server_round: int) -> dict[str, float]:
        self._start_executor()  # once per run: its start-up (Ray's) is logged apart, not in round_time_s
        started = time.perf_counter()
        global_params = self.global_params()
        plans = self.strategy.configure_round(server_round, self.sample_clients(server_round), global_params)
        outcomes = self.executor.run([self.make_task(plan, server_round) for plan in plans], global_params)
        results: list[ClientResult] = []
        failures: list[ClientFailure] = []
        for outcome in outcomes:  # in task order, wherever they ran
            self.apply_outcome(outcome)
            if outcome.result is not None:
                results.append(outcome.result)
            else:
                failures.append(outcome.failure)
        results, failures = self.faults.process(server_round, global_params, results, failures)
        skipped = len(results) < self.min_clients
        if skipped:
            new_params = self.strategy.keep(global_params)
        else:
            new_params = self.strategy.aggregate(server_round, global_params, results, failures)
        self.model.load_state_dict(new_params)
        metrics: dict[str, float] = {"clients_ok": len(results), "clients_failed": len(failures),
                                     "round_skipped": int(skipped)}
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
        """Run the remaining rounds (all of them, unless restored from a checkpoint), then close the executor."""
        reported_startup = None
        try:
            for server_round in range(self.server_round + 1, self.rounds + 1):
                metrics = self.run_round(server_round)
                if reported_startup is None:  # the executor started in this call's first round
                    reported_startup = self.executor.startup_s
                    if reported_startup:
                        metrics["executor_startup_s"] = reported_startup
                self.server_round = server_round
                self.history.append({"round": server_round, **metrics})
                for listener in self.listeners:
                    listener.on_round_end(server_round, metrics)
        finally:
            self.close()
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
            # dropout and a user's model draw from the global generators between rounds
            "rng": capture_rng_state(),
            "faults": self.faults.state_dict(),
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
        if state.get("rng") is not None:
            restore_rng_state(state["rng"])
        if state.get("faults") is not None:
            self.faults.load_state_dict(state["faults"])

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
        state = torch.load(path, weights_only=False)
        state["store"]["root"] = str(path.parent / "clients")  # where the files are now, should the folder have moved
        self.load_state_dict(state)
