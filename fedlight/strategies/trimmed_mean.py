"""Coordinate-wise trimmed mean: Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal
Statistical Rates" (ICML 2018); Flower's FedTrimmedAvg.

Each coordinate drops the ``byzantine_f`` largest and smallest values of the
parties and averages the rest. Hyperparameter: ``byzantine_f`` (1: one
Byzantine party per round, about the 10% that 10 sampled parties can
tolerate at 20% Byzantine parties overall; needs n > 2f).
"""

from __future__ import annotations

import torch

from fedlight.strategies.robust import RobustStrategy, trimmed_mean


class TrimmedMean(RobustStrategy):
    name = "trimmed_mean"

    def combine(self, rows: torch.Tensor, f: int) -> torch.Tensor:
        return trimmed_mean(rows, f)
