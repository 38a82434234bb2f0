"""Models. None uses BatchNorm, so Opacus' per-sample gradients apply as is.

Every model exposes ``embed(x)`` (the penultimate representation, which
MOON's contrastive loss uses as its projection-head output) and
``head(z)`` (the classifier), with ``forward = head(embed(x))``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fedlight.errors import ConfigError


class _ConvNet(nn.Module):
    def __init__(self, features: nn.Sequential, input_shape: tuple[int, int, int], hidden: int, num_classes: int):
        super().__init__()
        self.features = features
        with torch.no_grad():
            flat = self.features(torch.zeros(1, *input_shape)).numel()
        self.projection = nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU())
        self.classifier = nn.Linear(hidden, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.features(x))

    def head(self, z: torch.Tensor) -> torch.Tensor:
        return self.classifier(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


class LeafCNN(_ConvNet):
    """The FEMNIST CNN of LEAF (Caldas et al., arXiv:1812.01097).

    Two 5x5 convolutions (32 and 64 channels, "same" padding, 2x2 max-pool
    after each), a dense layer of 2048 units, and the classifier; 6.6M
    parameters for 28x28 inputs and 62 classes.
    """

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int):
        features = nn.Sequential(
            nn.Conv2d(input_shape[0], 32, kernel_size=5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        )
        super().__init__(features, input_shape, hidden=2048, num_classes=num_classes)


class SmallCNN(_ConvNet):
    """A small 2-conv CNN for fast CPU experiments.

    Two 3x3 convolutions (16 and 32 channels, 2x2 max-pool after each), a
    dense layer of 128 units and the classifier; about 0.2M parameters for
    28x28 inputs and 62 classes.
    """

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int):
        features = nn.Sequential(
            nn.Conv2d(input_shape[0], 16, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        super().__init__(features, input_shape, hidden=128, num_classes=num_classes)


MODELS: dict[str, Callable[[tuple[int, int, int], int], nn.Module]] = {
    "leaf_cnn": LeafCNN,
    "small_cnn": SmallCNN,
}


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return MODELS[name](tuple(input_shape), num_classes)
