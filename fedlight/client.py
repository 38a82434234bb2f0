"""Client-side training: a LightningModule fitted on a fresh Trainer per round.

Algorithm-specific client logic is never a copied training loop: it is a
Lightning callback in the round's :class:`~fedlight.strategies.ClientPlan`.
A callback that adds a term to the local objective implements
:class:`LossTerm`; one that edits gradients implements :class:`GradientEdit`.

Two kinds of model are fitted here (:func:`fedlight.models.model_kind`): a
plain ``nn.Module`` is wrapped in :class:`ClientModule` (cross-entropy, the
loop's SGD, the callbacks' loss terms); a user's own ``LightningModule`` is
fitted as it is, with :class:`TrainLossRecorder` reading its loss. Callbacks
reach the federated model and the report for the server through
:func:`local_model` and :func:`client_report`, which work for both.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback
from lightning.pytorch.trainer.connectors import callback_connector as _callback_connector
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedlight.errors import ConfigError
from fedlight.models import has_embed_head, model_name

_LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric")


def _quiet_lightning() -> None:
    """Lightning prints GPU/TPU availability and tips on every Trainer otherwise.

    Called before each Trainer, not once: importing ``pytorch_lightning``
    (mlflow.pytorch does, when a model is logged) resets its logger to INFO.
    A level already set is left alone: ``setLevel`` clears the cache of
    every logger in the process, about 1 ms with MLflow's loggers loaded.
    """
    for name in _LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level != logging.WARNING:
            logger.setLevel(logging.WARNING)


@functools.cache
def _callback_factories(group: str) -> tuple[Any, ...]:
    """The entry points of ``group``, looked up once per process."""
    return tuple(entry_points(group=group))


def _load_external_callbacks(group: str) -> list[Any]:
    """Lightning's external callbacks (entry-point factories), with the entry points looked up once.

    Lightning's own ``_load_external_callbacks`` scans every installed
    distribution's metadata at each ``Trainer()`` (about 4 ms of the 4.4 ms
    a client Trainer takes to build here); the installed distributions do
    not change during a run, so the lookup is cached. Each factory is still
    called for each Trainer, so every Trainer gets its own callbacks.
    """
    callbacks: list[Any] = []
    for factory in _callback_factories(group):
        made = factory.load()()
        callbacks.extend(made if isinstance(made, list) else [made])
    return callbacks


if hasattr(_callback_connector, "_load_external_callbacks"):
    _callback_connector._load_external_callbacks = _load_external_callbacks


warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


class LossTerm(Callback):
    """A callback that adds ``loss_term(...)`` to the local objective.

    The term is per sample (shape ``[batch]``), like the cross-entropy it is
    added to before the batch mean: DP-SGD's ghost clipping needs each
    sample's loss to bound each sample's gradient.

    ``needs_embedding``: the term reads ``embedding`` (the model's
    ``embed(x)``), so the module computes the logits as ``head(embed(x))``
    and refuses a model without ``embed``/``head``. A term that only needs
    the logits sets it to False. Loss terms need :class:`ClientModule`: a
    user's own LightningModule has its own objective.
    """

    needs_embedding: bool = True

    def loss_term(
        self, module: ClientModule, x: torch.Tensor, y: torch.Tensor, embedding: torch.Tensor, logits: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError


class GradientEdit(Callback):
    """A callback that edits the gradients right before each optimizer step.

    Without DP the module calls :meth:`edit_gradients` from Lightning's
    ``on_before_optimizer_step``; with DP-SGD it is called after Opacus has
    clipped and noised the gradients, so the edit (a function of the weights
    only, such as FedProx's proximal gradient) is post-processing and costs
    no privacy.

    A user's own LightningModule (not a :class:`ClientModule`) gets the edit
    from this callback's ``on_before_optimizer_step``, which Lightning calls
    after the backward pass and before the step (and before gradient
    clipping), in automatic and manual optimization alike. The edit then
    reaches all of that module's parameters (:func:`local_model`).
    """

    def edit_gradients(self, module: ClientModule | L.LightningModule) -> None:
        raise NotImplementedError

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer) -> None:
        # a ClientModule calls edit_gradients itself (after the noise, under DP-SGD)
        if not isinstance(pl_module, ClientModule):
            self.edit_gradients(pl_module)


class ClientModule(L.LightningModule):
    """Local training of one client: cross-entropy plus any callbacks' loss terms.

    ``report`` collects what callbacks want sent back to the server; the loop
    copies it into :attr:`ClientResult.extras`.
    """

    def __init__(self, model: nn.Module, *, lr: float, momentum: float = 0.0, optimizer: torch.optim.Optimizer | None = None):
        super().__init__()
        self.model = model
        self.lr = lr
        self.momentum = momentum
        self._optimizer = optimizer
        self.report: dict[str, Any] = {}
        self._loss_sum = 0.0
        self._loss_count = 0
        self._loss_terms: list[LossTerm] = []
        self._gradient_edits: list[GradientEdit] = []
        self._needs_embedding = False
        # Set by DP-SGD: gradient edits then run after noising, from Opacus' step hook.
        self.edit_gradients_after_noise = False
        # Set by DP-SGD with ghost clipping: replaces loss.backward() with a
        # backward pass that clips each sample's gradient; it gets the
        # per-sample losses and the batch's inputs.
        self.per_sample_backward: Callable[[torch.Tensor, torch.Tensor], None] | None = None
        self._pending_backward: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def on_fit_start(self) -> None:
        self._loss_terms = [cb for cb in self.trainer.callbacks if isinstance(cb, LossTerm)]
        self._gradient_edits = [cb for cb in self.trainer.callbacks if isinstance(cb, GradientEdit)]
        self._needs_embedding = any(term.needs_embedding for term in self._loss_terms)
        if self._needs_embedding and not has_embed_head(self.model):
            names = ", ".join(type(t).__name__ for t in self._loss_terms if t.needs_embedding)
            raise ConfigError(f"{names} needs a model with embed(x) and head(z); {model_name(self.model)} lacks them")

    def apply_gradient_edits(self) -> None:
        for edit in self._gradient_edits:
            edit.edit_gradients(self)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if not self.edit_gradients_after_noise:
            self.apply_gradient_edits()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self.per_sample_backward is not None:
            # ghost clipping's first backward pass only needs to reach the inputs
            x = x.requires_grad_(True)
        if self._needs_embedding:
            embedding = self.model.embed(x)
            logits = self.model.head(embedding)
        else:
            # the built-ins' forward is head(embed(x)): the same computation
            embedding, logits = None, self.model(x)
        if len(y) == 0:
            # Poisson sampling (DP-SGD) can draw an empty batch; the step must
            # still happen (noise only), so return a zero loss with a graph.
            return logits.sum() * 0.0
        per_sample = F.cross_entropy(logits, y, reduction="none")
        self._loss_sum += float(per_sample.detach().sum())
        self._loss_count += len(y)
        for term in self._loss_terms:
            per_sample = per_sample + term.loss_term(self, x, y, embedding, logits)
        if self.per_sample_backward is not None:
            self._pending_backward = (per_sample, x)
        return per_sample.mean()

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        pending, self._pending_backward = self._pending_backward, None
        if self.per_sample_backward is not None and pending is not None:
            self.per_sample_backward(*pending)
        else:
            super().backward(loss, *args, **kwargs)

    @property
    def mean_train_loss(self) -> float:
        return self._loss_sum / self._loss_count if self._loss_count else math.nan

    def use_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Fit with this optimizer (e.g. Opacus' DPOptimizer) instead of building plain SGD."""
        self._optimizer = optimizer

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self._optimizer is not None:
            return self._optimizer
        return torch.optim.SGD(self.model.parameters(), lr=self.lr, momentum=self.momentum)


def local_model(pl_module: Any) -> nn.Module:
    """The model whose parameters are federated: ``ClientModule.model``, or a user's LightningModule itself."""
    if isinstance(pl_module, L.LightningModule) and not isinstance(pl_module, ClientModule):
        return pl_module
    return pl_module.model


def client_report(trainer: Any, pl_module: Any) -> dict[str, Any]:
    """The dict a callback fills for the server (:attr:`ClientResult.extras`).

    ``ClientModule.report``, or for a user's LightningModule the report of
    the fit's :class:`TrainLossRecorder` (fedlight sets no attribute on a
    user's module).
    """
    if isinstance(pl_module, L.LightningModule) and not isinstance(pl_module, ClientModule):
        for callback in trainer.callbacks:
            if isinstance(callback, TrainLossRecorder):
                return callback.report
        raise RuntimeError("a LightningModule's fit needs a TrainLossRecorder among its callbacks")
    return pl_module.report


STATE_UPDATES = "state_updates"


def client_state_updates(trainer: Any, pl_module: Any) -> dict[str, Any]:
    """The dict a callback fills with what its party keeps for the next round (``key -> value``).

    A client's training is a pure task: it never writes the state store. The
    driver applies these updates to the store (keyed by the client's id)
    after the task returns, wherever the task ran (in process, on a Ray
    worker, on another node).
    """
    return client_report(trainer, pl_module).setdefault(STATE_UPDATES, {})


def _batch_size(batch: Any) -> int | None:
    first = batch[0] if isinstance(batch, (list, tuple)) and batch else batch
    return len(first) if isinstance(first, torch.Tensor) and first.dim() > 0 else None


class TrainLossRecorder(Callback):
    """The mean training loss of a user's LightningModule over a fit, and its report for the server.

    The loss is what ``training_step`` returned (a tensor, or a dict with
    ``"loss"``), weighted by the batch's size when the batch is a tensor or
    a sequence starting with one, as :class:`ClientModule` averages over
    samples.
    """

    def __init__(self):
        self.report: dict[str, Any] = {}
        self._loss_sum = 0.0
        self._loss_count = 0.0
        self.batches = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            return
        weight = _batch_size(batch) or 1
        self._loss_sum += float(loss.detach()) * weight
        self._loss_count += weight
        self.batches += 1

    @property
    def mean_train_loss(self) -> float:
        return self._loss_sum / self._loss_count if self._loss_count else math.nan


class TensorBatches(TensorDataset):
    """A ``TensorDataset`` that a DataLoader reads a batch at a time.

    PyTorch's fetcher asks ``__getitems__`` for a whole batch of indices; one
    indexing of each tensor replaces a ``__getitem__`` per sample and the
    collate's stack, for the same batches in the same order. Read it with
    :func:`stacked` as the loader's ``collate_fn``.
    """

    def __getitems__(self, indices: Sequence[int]) -> list[torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return [tensor[index] for tensor in self.tensors]


def stacked(batch: list[torch.Tensor]) -> list[torch.Tensor]:
    """The collate function of a :class:`TensorBatches` loader: the batch is already stacked."""
    return batch


def make_loader(x: torch.Tensor, y: torch.Tensor, *, batch_size: int, seed: int) -> DataLoader:
    """Shuffled batches of (x, y), the order drawn from a generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(TensorBatches(x, y), batch_size=batch_size, shuffle=True, generator=generator, collate_fn=stacked)


class _InterruptRecorder(Callback):
    """Keeps the Ctrl-C (or SIGTERM, :mod:`fedlight.interrupts`) that stopped a fit."""

    def __init__(self):
        self.interrupt: KeyboardInterrupt | None = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt):
            self.interrupt = exception


def fit_client(
    module: L.LightningModule,
    loader: DataLoader,
    *,
    epochs: int,
    callbacks: Sequence[Callback] = (),
    max_steps: int | None = None,
    accelerator: str = "cpu",
) -> int:
    """Fit ``module`` on a fresh Trainer (a reused one trains 0 steps); return the optimizer steps taken.

    ``module`` is a :class:`ClientModule` or a user's own LightningModule.
    With ``max_steps`` the fit takes that many optimizer steps, cycling over
    ``loader`` as often as needed (each pass reshuffles), and ``epochs`` is
    ignored; FLamby's protocol, for one, is 100 local steps of batch 4 a round.
    ``accelerator`` is Lightning's (``"cpu"`` or ``"gpu"``, one device).
    """
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1):
        raise ConfigError(f"local steps must be a positive integer, got {max_steps!r}")
    _quiet_lightning()
    interrupts = _InterruptRecorder()
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        max_epochs=epochs if max_steps is None else -1,
        max_steps=-1 if max_steps is None else max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[*callbacks, interrupts],
    )
    try:
        trainer.fit(module, train_dataloaders=loader)
    except SystemExit:
        # Lightning answers an interrupt inside fit with sys.exit(1); raise the
        # interrupt instead, so that the MLflow run ends KILLED, not FAILED.
        if interrupts.interrupt is not None:
            raise interrupts.interrupt from None
        raise
    return int(trainer.global_step)
