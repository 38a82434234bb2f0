"""Coordinate-wise median: Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal
Statistical Rates" (ICML 2018); Flower's FedMedian.

Each coordinate of the next global model is the median of the parties'
values (for an even count, the mean of the two middle ones). It needs no
hyperparameter; it tolerates fewer than half the parties being Byzantine.
"""

from __future__ import annotations

import torch

from fedlight.strategies.robust import RobustStrategy, coordinate_median


class Median(RobustStrategy):
    name = "median"

    def __init__(self):
        super().__init__(byzantine_f=0)

    def combine(self, rows: torch.Tensor, f: int) -> torch.Tensor:
        return coordinate_median(rows)
