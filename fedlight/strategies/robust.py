"""Robust aggregation rules (pure tensor functions) and the base class of the strategies built on them.

Each function takes the parties' models as the rows of a matrix ``[n, d]``
(flattened floating-point parameters) and returns one row. The rules are
translation-invariant, so applying them to models or to updates
(theta_i - theta_global) gives the same aggregate. They are unweighted:
a Byzantine party could otherwise claim a large sample count.
"""

from __future__ import annotations

from typing import Any

import numpy as np
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


def largest_f(rule_minimum_extra: int, n: int, f: int, per_f: int = 2) -> int:
    """The largest f' <= f with n >= per_f f' + rule_minimum_extra (0 when even f' = 0 needs more rows)."""
    return max(0, min(f, (n - rule_minimum_extra) // per_f))


def _krum_pick(distances: torch.Tensor, remaining: list[int], f: int) -> int:
    """The remaining row with the lowest Krum score among the remaining rows (ties: lower index).

    The number of neighbours is max(1, r - f - 2) for r remaining rows, as in
    Flower's Bulyan, so the last picks of the selection still have a score.
    """
    sub = distances[remaining][:, remaining]
    neighbours = max(1, len(remaining) - f - 2)
    scores = sub.sort(dim=1).values[:, :neighbours].sum(dim=1)
    return remaining[int(torch.argsort(scores, stable=True)[0])]


def bulyan(rows: torch.Tensor, f: int) -> torch.Tensor:
    """Bulyan (El Mhamdi, Guerraoui and Rouault, ICML 2018); needs n >= 4 f + 3 rows.

    Selection: theta = n - 2f rows, picked one at a time by Krum among the
    rows not yet picked. Aggregation: in each coordinate, the mean of the
    beta = theta - 2f picked values closest to their median (ties: lower row).
    With f = 0 it is the plain mean.
    """
    n = rows.shape[0]
    if n < 4 * f + 3:
        raise ValueError(f"Bulyan needs n >= 4f + 3 rows, got n = {n}, f = {f}")
    distances = torch.cdist(rows.double(), rows.double()).pow(2)
    distances.fill_diagonal_(float("inf"))
    remaining, picked = list(range(n)), []
    for _ in range(n - 2 * f):
        best = _krum_pick(distances, remaining, f)
        picked.append(best)
        remaining.remove(best)
    selected = rows[sorted(picked)]
    beta = len(picked) - 2 * f
    gaps = (selected - coordinate_median(selected)).abs()
    closest = torch.argsort(gaps, dim=0, stable=True)[:beta]
    return selected.gather(0, closest).mean(dim=0)


def centered_clipping(rows: torch.Tensor, center: torch.Tensor, tau: float | None, iterations: int) -> torch.Tensor:
    """Centered clipping (Karimireddy, He and Jaggi, ICML 2021).

    v_0 = center; v_{l+1} = v_l + mean_i (x_i - v_l) min(1, tau / ||x_i - v_l||)
    for ``iterations`` steps. ``tau`` None takes the median of the distances
    ||x_i - v_0||: a radius set by the honest majority, whatever the scale
    of the updates.
    """
    if iterations < 1:
        raise ValueError(f"centered clipping needs at least one iteration, got {iterations}")
    v = center.to(rows.dtype)
    if tau is None:
        tau = float((rows - v).norm(dim=1).median())
    for _ in range(iterations):
        diff = rows - v
        norms = diff.norm(dim=1, keepdim=True)
        scale = torch.where(norms > tau, tau / norms.clamp_min(torch.finfo(norms.dtype).tiny), torch.ones_like(norms))
        v = v + (diff * scale).mean(dim=0)
    return v


def clipping_radius(distances: torch.Tensor, f: int) -> float:
    """The median of the n - f smallest distances (f of them may be Byzantine; 0 <= f < n).

    With up to f Byzantine parties and n - f >= 2 honest, the (n - f) / 2
    smallest distances are the honest parties' or below them: a radius the
    honest majority sets even in a round that samples more attackers than
    half of n, as long as they are fewer than n - f halves.
    """
    n = distances.numel()
    if not 0 <= f < n:
        raise ValueError(f"a clipping radius from {n} distances cannot leave out {f}")
    smallest = distances.flatten().sort().values[: n - f]
    m = smallest.numel()
    middle = smallest[m // 2] if m % 2 else (smallest[m // 2 - 1] + smallest[m // 2]) / 2
    return float(middle)


def nearest_neighbour_mixing(rows: torch.Tensor, f: int) -> torch.Tensor:
    """NNM (Allouah et al., "Fixing by Mixing", AISTATS 2023): each row becomes the mean of its
    n - f nearest rows, itself included (ties: lower index)."""
    n = rows.shape[0]
    if not 0 <= f < n:
        raise ValueError(f"NNM of {n} rows cannot leave out {f}")
    distances = torch.cdist(rows.double(), rows.double())
    nearest = torch.argsort(distances, dim=1, stable=True)[:, : n - f]
    return rows[nearest].mean(dim=1)


def bucketing(rows: torch.Tensor, bucket_size: int, generator: torch.Generator) -> torch.Tensor:
    """Bucketing (Karimireddy, He and Jaggi, ICLR 2022): the means of buckets of ``bucket_size``
    rows of a random permutation; the last bucket holds what is left (ceil(n / s) rows out)."""
    if bucket_size < 1:
        raise ValueError(f"bucket size must be positive, got {bucket_size}")
    order = torch.randperm(rows.shape[0], generator=generator)
    return torch.stack([rows[chunk].mean(dim=0) for chunk in order.split(bucket_size)])


PRE_AGGREGATIONS = ("none", "nnm", "bucketing")


class RobustStrategy(Strategy):
    """A strategy that combines the parties' models by a robust rule instead of their weighted mean.

    ``byzantine_f`` is the number of Byzantine parties the rule tolerates per
    round. A round with too few parties for it uses the largest f it can
    (logged as ``robust_f``); one with fewer parties than the rule needs
    even for f = 0 (Krum: 3) takes their plain mean.

    ``pre_aggregation`` mixes the rows before the rule: ``nnm`` replaces each
    by the mean of its n - f nearest (:func:`nearest_neighbour_mixing`),
    ``bucketing`` by the means of random buckets of ``bucket_size`` rows
    (:func:`bucketing`, seeded by the round and its parties, so a rerun or a
    resumed run draws the same buckets); the rule then sees ceil(n / s)
    rows and the largest f <= ``byzantine_f`` they allow. ``bucket_size`` 2
    is the size Karimireddy et al. (2022) use in their experiments: it
    halves the Byzantine parties' share of the heterogeneity while leaving
    the rule half the rows.
    Client-level DP is refused with these rules (its noise is calibrated to
    the mean's sensitivity, see :func:`fedlight.experiment.configure_privacy`).
    """

    #: n >= per_f * f + minimum_extra rows are needed
    minimum_extra = 1
    per_f = 2

    def __init__(self, byzantine_f: int = 1, pre_aggregation: str = "none", bucket_size: int = 2):
        if byzantine_f < 0:
            raise ValueError(f"byzantine_f must be non-negative, got {byzantine_f}")
        if pre_aggregation not in PRE_AGGREGATIONS:
            raise ValueError(f"unknown pre_aggregation {pre_aggregation!r}; choose from {', '.join(PRE_AGGREGATIONS)}")
        if bucket_size < 1:
            raise ValueError(f"bucket_size must be positive, got {bucket_size}")
        self.byzantine_f = byzantine_f
        self.pre_aggregation = pre_aggregation
        self.bucket_size = bucket_size
        self._round_metrics: dict[str, float] = {}
        #: the flattened global model of the round being aggregated (centered clipping's reference)
        self._global_row: torch.Tensor | None = None

    def combine(self, rows: torch.Tensor, f: int) -> torch.Tensor:
        raise NotImplementedError

    def pre_aggregate(self, server_round: int, rows: torch.Tensor, client_ids: list[int], f: int) -> torch.Tensor:
        """The rows the rule sees: as they are, mixed by NNM, or bucketed."""
        if self.pre_aggregation == "nnm":
            return nearest_neighbour_mixing(rows, f)
        if self.pre_aggregation == "bucketing":
            generator = torch.Generator().manual_seed(hash_ints(server_round, *sorted(client_ids)))
            return bucketing(rows, self.bucket_size, generator)
        return rows

    def aggregate(
        self, server_round: int, global_params: Params, results: list[ClientResult], failures: list[ClientFailure]
    ) -> Params:
        self._round_metrics = {}
        if not results:
            return self.keep(global_params)
        keys = [k for k, v in global_params.items() if torch.is_floating_point(v)]
        rows = torch.stack([torch.cat([r.params[k].reshape(-1) for k in keys]) for r in results])
        self._global_row = torch.cat([global_params[k].reshape(-1) for k in keys]).to(rows.dtype)
        f = largest_f(self.minimum_extra, len(results), self.byzantine_f, self.per_f)
        rows = self.pre_aggregate(server_round, rows, [r.client_id for r in results], f)
        f = largest_f(self.minimum_extra, rows.shape[0], self.byzantine_f, self.per_f)
        # fewer rows than the rule needs even for f = 0 (Krum's neighbours): their plain mean
        combined = rows.mean(dim=0) if rows.shape[0] < self.minimum_extra else self.combine(rows, f)
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


def hash_ints(*values: int) -> int:
    """A stable 63-bit seed from integers (Python's hash() of a tuple is not stable across versions)."""
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(2, dtype=np.uint64)[0] >> 1)
