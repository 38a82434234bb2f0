"""Centered clipping: Karimireddy, He and Jaggi, "Learning from History for Byzantine Robust
Optimization" (ICML 2021); ByzFL's CenteredClipping.

The parties' updates are clipped to a ball of radius tau around a centre and
averaged, ``clip_iterations`` times; the centre starts at the previous
round's aggregate update (the server's momentum of the paper; zero in round
1), so one Byzantine party moves the aggregate by at most tau / n a round.
Hyperparameters: ``clip_tau`` (None: the median distance of the round's
updates to the centre, a radius the honest majority sets whatever the
scale of the updates, where a fixed tau would need tuning per model and
learning rate) and ``clip_iterations`` (1: the paper reports that a single
iteration suffices once the centre carries the history). The previous
aggregate is strategy state and is checkpointed.
"""

from __future__ import annotations

from typing import Any

import torch

from fedlight.strategies.robust import RobustStrategy, centered_clipping


class CenteredClipping(RobustStrategy):
    name = "centered_clipping"

    def __init__(
        self,
        byzantine_f: int = 1,
        pre_aggregation: str = "none",
        bucket_size: int = 2,
        clip_tau: float | None = None,
        clip_iterations: int = 1,
    ):
        super().__init__(byzantine_f=byzantine_f, pre_aggregation=pre_aggregation, bucket_size=bucket_size)
        if clip_tau is not None and not clip_tau > 0:
            raise ValueError(f"clip_tau must be positive, got {clip_tau}")
        if clip_iterations < 1:
            raise ValueError(f"clip_iterations must be positive, got {clip_iterations}")
        self.clip_tau = clip_tau
        self.clip_iterations = clip_iterations
        self.previous_update: torch.Tensor | None = None

    def combine(self, rows: torch.Tensor, f: int) -> torch.Tensor:
        base = self._global_row
        momentum = self.previous_update if self.previous_update is not None else torch.zeros_like(base)
        # clipping is translation-equivariant: clipping models around base + momentum is clipping updates around momentum
        combined = centered_clipping(rows - base, momentum.to(rows.dtype), self.clip_tau, self.clip_iterations)
        self.previous_update = combined.detach().clone()
        return base + combined

    def state_dict(self) -> dict[str, Any]:
        return {"previous_update": self.previous_update}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.previous_update = state.get("previous_update")
