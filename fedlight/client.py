"""Client-side training: a LightningModule fitted on a fresh Trainer per round.

Algorithm-specific client logic is never a copied training loop: it is a
Lightning callback in the round's :class:`~fedlight.strategies.ClientPlan`.
A callback that adds a term to the local objective implements
:class:`LossTerm`; one that edits gradients uses ``on_before_optimizer_step``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

# Lightning prints GPU/TPU availability and tips on every Trainer otherwise.
logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
logging.getLogger("lightning.fabric").setLevel(logging.WARNING)


class LossTerm(Callback):
    """A callback that adds ``loss_term(...)`` to the local objective."""

    def loss_term(
        self, module: ClientModule, x: torch.Tensor, y: torch.Tensor, embedding: torch.Tensor, logits: torch.Tensor
    ) -> torch.Tensor:
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def on_fit_start(self) -> None:
        self._loss_terms = [cb for cb in self.trainer.callbacks if isinstance(cb, LossTerm)]

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        embedding = self.model.embed(x)
        logits = self.model.head(embedding)
        loss = F.cross_entropy(logits, y)
        self._loss_sum += float(loss.detach()) * len(y)
        self._loss_count += len(y)
        for term in self._loss_terms:
            loss = loss + term.loss_term(self, x, y, embedding, logits)
        return loss

    @property
    def mean_train_loss(self) -> float:
        return self._loss_sum / self._loss_count if self._loss_count else math.nan

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self._optimizer is not None:
            return self._optimizer
        return torch.optim.SGD(self.model.parameters(), lr=self.lr, momentum=self.momentum)


def make_loader(x: torch.Tensor, y: torch.Tensor, *, batch_size: int, seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True, generator=generator)


def fit_client(module: ClientModule, loader: DataLoader, *, epochs: int, callbacks: Sequence[Callback] = ()) -> int:
    """Fit ``module`` on a fresh Trainer (a reused one trains 0 steps); return the optimizer steps taken."""
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
        callbacks=list(callbacks),
    )
    trainer.fit(module, train_dataloaders=loader)
    return int(trainer.global_step)
