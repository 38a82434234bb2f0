"""Client-side training: a LightningModule fitted on a fresh Trainer per round.

Algorithm-specific client logic is never a copied training loop: it is a
Lightning callback in the round's :class:`~fedlight.strategies.ClientPlan`.
A callback that adds a term to the local objective implements
:class:`LossTerm`; one that edits gradients uses ``on_before_optimizer_step``.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

_LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric")


def _quiet_lightning() -> None:
    """Lightning prints GPU/TPU availability and tips on every Trainer otherwise.

    Called before each Trainer, not once: importing ``pytorch_lightning``
    (mlflow.pytorch does, when a model is logged) resets its logger to INFO.
    """
    for name in _LIGHTNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


class LossTerm(Callback):
    """A callback that adds ``loss_term(...)`` to the local objective.

    The term is per sample (shape ``[batch]``), like the cross-entropy it is
    added to before the batch mean: DP-SGD's ghost clipping needs each
    sample's loss to bound each sample's gradient.
    """

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
    """

    def edit_gradients(self, module: ClientModule) -> None:
        raise NotImplementedError


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
        embedding = self.model.embed(x)
        logits = self.model.head(embedding)
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


def make_loader(x: torch.Tensor, y: torch.Tensor, *, batch_size: int, seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True, generator=generator)


class _InterruptRecorder(Callback):
    """Keeps the Ctrl-C (or SIGTERM, :mod:`fedlight.interrupts`) that stopped a fit."""

    def __init__(self):
        self.interrupt: KeyboardInterrupt | None = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt):
            self.interrupt = exception


def fit_client(module: ClientModule, loader: DataLoader, *, epochs: int, callbacks: Sequence[Callback] = ()) -> int:
    """Fit ``module`` on a fresh Trainer (a reused one trains 0 steps); return the optimizer steps taken."""
    _quiet_lightning()
    interrupts = _InterruptRecorder()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
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
