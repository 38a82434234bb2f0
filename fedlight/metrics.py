"""Evaluation: loss, accuracy and macro precision/recall/F1 via torchmetrics."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    finally:
        model.train(was_training)


def classification_metrics(logits: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Micro accuracy and macro precision/recall/F1 over ``num_classes`` classes.

    Macro averages are over the classes present in ``y`` or the predictions
    (torchmetrics ignores classes with no support in either).
    """
    preds = logits.argmax(dim=1)
    kwargs = {"num_classes": num_classes, "average": "macro"}
    return {
        "loss": float(F.cross_entropy(logits, y)),
        "accuracy": float(multiclass_accuracy(preds, y, num_classes=num_classes, average="micro")),
        "precision": float(multiclass_precision(preds, y, **kwargs, zero_division=0)),
        "recall": float(multiclass_recall(preds, y, **kwargs, zero_division=0)),
        "f1": float(multiclass_f1_score(preds, y, **kwargs, zero_division=0)),
    }


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict[str, float]:
    return classification_metrics(predict_logits(model, x), y, num_classes)


@torch.no_grad()
def loss_and_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """The cheap pair used on clients' local validation splits."""
    if len(y) == 0:
        return float("nan"), float("nan")
    logits = predict_logits(model, x)
    return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())
