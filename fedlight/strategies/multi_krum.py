"""Multi-Krum: El Mhamdi, Guerraoui and Rouault, "The Hidden Vulnerability of Distributed
Learning in Byzantium" (ICML 2018), after Blanchard et al.'s Krum.

The mean of the m models with the lowest Krum scores. Hyperparameters:
``byzantine_f`` (1; needs n >= 2f + 3) and m = n - f, the usual choice,
which keeps every party Krum does not suspect.
"""

from __future__ import annotations

import torch

from fedlight.strategies.robust import RobustStrategy, multi_krum


class MultiKrum(RobustStrategy):
    name = "multi_krum"
    minimum_extra = 3

    def combine(self, rows: torch.Tensor, f: int) -> torch.Tensor:
        return multi_krum(rows, f, rows.shape[0] - f)[0]
