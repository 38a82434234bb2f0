"""Robust aggregation rules (pure tensor functions) and the base class of the strategies built on them.

Each function takes the parties' models as the rows of a matrix ``[n, d]``
(flattened floating-point parameters) and returns one row. The rules are
translation-invariant, so applying them to models or to updates
(theta_i - theta_global) gives the same aggregate. They are unweighted:
a Byzantine party could otherwise claim a large sample count.
"""

from __future__ import annotations

from typing import Any

import torch

from fedlight.strategies.base import ClientFailure, ClientResult, Params, Strategy


def coordinate_median(rows: torch.Tensor) -> torch.Tensor:
    """The coordinate-wise median; for an even count, the mean of the two middle values (Yin et al., ICML 2018)."""
    ordered = rows.sort(dim=0).values
    n = rows.shape[0]
    if n % 2:
        return ordered[n // 2]
    return (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def trimmed_mean(rows: torch.Tensor, f: int) -> torch.Tensor:
    """The coordinate-wise mean after dropping the f largest and f smallest values (Yin et al., ICML 2018)."""
    n = rows.shape[0]
    if not 0 <= 2 * f < n:
        raise ValueError(f"trimmed mean of {n} rows cannot drop {f} per side")
    return rows.sort(dim=0).values[f : n - f].mean(dim=0)


def krum_scores(rows: torch.Tensor, f: int) -> torch.Tensor:
    """Each row's sum of squared distances to its n - f - 2 nearest other rows (Blanchard et al., NeurIPS 2017)."""
    n = rows.shape[0]
    neighbours = n - f - 2
    if neighbours < 1:
        raise ValueError(f"Krum needs n >= f + 3 rows, got n = {n}, f = {f}")
    distances = torch.cdist(rows.double(), rows.double()).pow(2)
    distances.fill_diagonal_(float("inf"))
    return distances.sort(dim=1).values[:, :neighbours].sum(dim=1)


def multi_krum(rows: torch.Tensor, f: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean of the m rows with the lowest Krum scores (m = 1: Krum), and the indices chosen (ties: lower index)."""
    scores = krum_scores(rows, f)
    chosen = torch.argsort(scores, stable=True)[:m]
    return rows[chosen].mean(dim=0), chosen


def largest_f(rule_minimum_extra: int, n: int, f: int) -> int:
    """The largest f' <= f with n >= 2 f' + rule_minimum_extra (0 when even f' = 0 needs more rows)."""
    return max(0, min(f, (n - rule_minimum_extra) // 2))


class RobustStrategy(Strategy):
    """A strategy that combines the parties' models by a robust rule instead of their weighted mean.

    ``byzantine_f`` is the number of Byzantine parties the rule tolerates per
    round. A round with too few parties for it uses the largest f it can
    (logged as ``robust_f``); one with fewer parties than the rule needs
    even for f = 0 (Krum: 3) takes their plain mean.
    Client-level DP is refused with these rules (its noise is calibrated to
    the mean's sensitivity, see :func:`fedlight.experiment.configure_privacy`).
    """

    #: n >= 2 f + extra rows are needed
    minimum_extra = 1

    def __init__(self, byzantine_f: int = 1):
        if byzantine_f < 0:
            raise ValueError(f"byzantine_f must be non-negative, got {byzantine_f}")
        self.byzantine_f = byzantine_f
        self._round_metrics: dict[str, float] = {}

    def combine(self, rows: torch.Tensor, f: int) -> torch.Tensor:
        raise NotImplementedError

    def aggregate(
        self, server_round: int, global_params: Params, results: list[ClientResult], failures: list[ClientFailure]
    ) -> Params:
        self._round_metrics = {}
        if not results:
            return self.keep(global_params)
        keys = [k for k, v in global_params.items() if torch.is_floating_point(v)]
        rows = torch.stack([torch.cat([r.params[k].reshape(-1) for k in keys]) for r in results])
        f = largest_f(self.minimum_extra, len(results), self.byzantine_f)
        # fewer parties than the rule needs even for f = 0 (Krum's neighbours): their plain mean
        combined = rows.mean(dim=0) if len(results) < self.minimum_extra else self.combine(rows, f)
        self._round_metrics["robust_f"] = float(f)
        new, offset = dict(global_params), 0
        for k in keys:
            size = global_params[k].numel()
            new[k] = combined[offset : offset + size].reshape(global_params[k].shape).to(global_params[k].dtype)
            offset += size
        return new

    def round_metrics(self) -> dict[str, float]:
        return dict(self._round_metrics)

    def state_dict(self) -> dict[str, Any]:
        return {}
