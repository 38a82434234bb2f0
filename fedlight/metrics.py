"""Evaluation: loss, accuracy and macro precision/recall/F1 via torchmetrics; balanced accuracy and ROC AUC for binary tasks."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.functional.classification import (
    binary_auroc,
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

    Binary tasks (``num_classes == 2``) also get ``balanced_accuracy`` and
    ``roc_auc``; see :func:`binary_metrics`.
    """
    preds = logits.argmax(dim=1)
    kwargs = {"num_classes": num_classes, "average": "macro"}
    metrics = {
        "loss": float(F.cross_entropy(logits, y)),
        "accuracy": float(multiclass_accuracy(preds, y, num_classes=num_classes, average="micro")),
        "precision": float(multiclass_precision(preds, y, **kwargs, zero_division=0)),
        "recall": float(multiclass_recall(preds, y, **kwargs, zero_division=0)),
        "f1": float(multiclass_f1_score(preds, y, **kwargs, zero_division=0)),
    }
    if num_classes == 2:
        metrics.update(binary_metrics(logits, y))
    return metrics


def binary_metrics(logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Balanced accuracy and ROC AUC of two-class logits ``[N, 2]`` against labels in {0, 1}.

    ``balanced_accuracy`` is the mean recall of the classes present in
    ``y`` (both, normally: (TPR + TNR) / 2; with one class present, that
    class's recall, as scikit-learn computes it). ``roc_auc`` is torchmetrics'
    binary AUROC of the softmax probability of class 1 (ties count one
    half); it is undefined with one class present (or none), and is then
    nan rather than an error or torchmetrics' 0.
    """
    preds = logits.argmax(dim=1)
    recalls = [float((preds[y == c] == c).float().mean()) for c in (0, 1) if bool((y == c).any())]
    balanced = sum(recalls) / len(recalls) if recalls else math.nan
    if len(recalls) == 2:
        roc_auc = float(binary_auroc(torch.softmax(logits.float(), dim=1)[:, 1], y))
    else:
        roc_auc = math.nan
    return {"balanced_accuracy": balanced, "roc_auc": roc_auc}


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict[str, float]:
    return classification_metrics(predict_logits(model, x), y, num_classes)


@torch.no_grad()
def loss_and_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """The cheap pair used on clients' local validation splits."""
    if len(y) == 0:
        return float("nan"), float("nan")
    logits = predict_logits(model, x)
    return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())
