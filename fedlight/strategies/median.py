"""Coordinate-wise median: Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal
Statistical Rates" (ICML 2018); Flower's FedMedian.

Each coordinate of the next global model is the median of the parties'
values (for an even count, the mean of the two middle ones). The rule needs
no hyperparameter; it tolerates fewer than half the parties being Byzantine.
``byzantine_f`` (1) is used only by the ``nnm`` pre-aggregation (each row
mixed with its n - f nearest).
"""

from __future__ import annotations

import torch

from fedlight.strategies.robust import RobustStrategy, coordinate_median


class Median(RobustStrategy):
    name = "median"

    def __init__(self, byzantine_f: int = 1, pre_aggregation: str = "none", bucket_size: int = 2):
        super().__init__(byzantine_f=byzantine_f, pre_aggregation=pre_aggregation, bucket_size=bucket_size)

    def combine(self, rows: torch.Tensor, f: int) -> torch.Tensor:
        return coordinate_median(rows)
