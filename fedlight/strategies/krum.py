"""Krum: Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant Gradient
Descent" (NeurIPS 2017).

The next global model is the one party's model whose n - f - 2 nearest
other models are closest (smallest sum of squared distances).
Hyperparameter: ``byzantine_f`` (1; needs n >= 2f + 3).
"""

from __future__ import annotations

import torch

from fedlight.strategies.robust import RobustStrategy, multi_krum


class Krum(RobustStrategy):
    name = "krum"
    minimum_extra = 3

    def combine(self, rows: torch.Tensor, f: int) -> torch.Tensor:
        return multi_krum(rows, f, 1)[0]
