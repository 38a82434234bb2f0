import math

import pytest
import torch

from fedlight.metrics import classification_metrics


def test_metrics_hand_computed():
    # predictions: 0, 0, 1, 2 ; targets: 0, 1, 1, 2
    logits = torch.tensor([[5.0, 0, 0], [5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0]])
    y = torch.tensor([0, 1, 1, 2])
    m = classification_metrics(logits, y, num_classes=3)
    assert abs(m["accuracy"] - 0.75) < 1e-6
    # precision per class: 1/2, 1, 1 -> 5/6 ; recall: 1, 1/2, 1 -> 5/6
    assert abs(m["precision"] - 5 / 6) < 1e-6
    assert abs(m["recall"] - 5 / 6) < 1e-6
    # f1 per class: 2/3, 2/3, 1 -> 7/9
    assert abs(m["f1"] - 7 / 9) < 1e-6
    assert m["loss"] > 0


def _binary_logits(scores):
    # class-1 logit s against a class-0 logit 0: p(class 1) = sigmoid(s), argmax is class 1 where s > 0
    return torch.stack([torch.zeros(len(scores)), torch.tensor(scores)], dim=1)


def test_multiclass_metrics_keep_their_keys():
    m = classification_metrics(torch.eye(3), torch.tensor([0, 1, 2]), num_classes=3)
    assert set(m) == {"loss", "accuracy", "precision", "recall", "f1"}


def test_binary_metrics_hand_computed():
    # negatives score -2, 1; positives -1, 2, 0.5
    logits = _binary_logits([-2.0, 1.0, -1.0, 2.0, 0.5])
    y = torch.tensor([0, 0, 1, 1, 1])
    m = classification_metrics(logits, y, num_classes=2)
    assert set(m) == {"loss", "accuracy", "precision", "recall", "f1", "balanced_accuracy", "roc_auc"}
    assert m["accuracy"] == pytest.approx(3 / 5)
    # recall of class 0: 1/2, of class 1: 2/3
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert m["balanced_accuracy"] == pytest.approx(m["recall"])
    # positive above negative in 4 of the 6 (positive, negative) pairs
    assert m["roc_auc"] == pytest.approx(4 / 6)


def test_binary_auc_counts_ties_as_half_and_ignores_the_logit_scale():
    y = torch.tensor([0, 1, 0, 1])
    assert classification_metrics(_binary_logits([0.3, 0.3, -1.0, 1.0]), y, 2)["roc_auc"] == pytest.approx((1 + 0.5 + 1 + 1) / 4)
    # AUROC ranks the probability of class 1, not the argmax: a model that predicts class 0 everywhere can still rank perfectly
    m = classification_metrics(_binary_logits([-3.0, -1.0, -4.0, -2.0]), y, 2)
    assert m["roc_auc"] == pytest.approx(1.0)
    assert m["balanced_accuracy"] == pytest.approx(0.5)


def test_binary_metrics_with_one_class_present():
    m = classification_metrics(_binary_logits([1.0, -1.0, 2.0]), torch.tensor([1, 1, 1]), num_classes=2)
    assert math.isnan(m["roc_auc"])
    assert m["balanced_accuracy"] == pytest.approx(2 / 3)  # the recall of the one class present
    assert m["accuracy"] == pytest.approx(2 / 3)
