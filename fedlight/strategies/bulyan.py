"""Bulyan: El Mhamdi, Guerraoui and Rouault, "The Hidden Vulnerability of Distributed Learning in
Byzantium" (ICML 2018); Flower's Bulyan.

Krum picks theta = n - 2f models one at a time; each coordinate of the next
global model is the mean of the beta = theta - 2f picked values closest to
their median. Hyperparameter: ``byzantine_f`` (1, the most that 10 parties
a round allow: Bulyan needs n >= 4f + 3).

Where n < 4f + 3 is refused: a run whose ``clients_per_round`` can never
reach 4f + 3 is refused before it starts (:func:`fedlight.config.validate`,
one line naming both numbers); a round that falls short because parties
failed or were dropped uses the largest f it allows, as the other robust
rules do (logged as ``robust_f``), rather than ending a long run.
"""

from __future__ import annotations

import torch

from fedlight.strategies.robust import RobustStrategy, bulyan


class Bulyan(RobustStrategy):
    name = "bulyan"
    minimum_extra = 3
    per_f = 4

    def combine(self, rows: torch.Tensor, f: int) -> torch.Tensor:
        return bulyan(rows, f)
