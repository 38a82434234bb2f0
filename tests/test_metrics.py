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
