"""FedAdam: Reddi et al., "Adaptive Federated Optimization" (ICLR 2021).

The sample-weighted mean of the client models minus the global model is a
pseudo-gradient Delta for a server-side Adam without bias correction:
m = b1 m + (1 - b1) Delta, v = b2 v + (1 - b2) Delta^2,
x += server_lr * m / (sqrt(v) + tau).
Hyperparameters: ``server_lr`` (default 0.01), ``server_beta1`` (0.9),
``server_beta2`` (0.99), ``server_tau`` (adaptivity, 1e-3).
"""

from __future__ import annotations

from typing import Any

import torch

from fedlight.strategies.base import ClientFailure, ClientResult, Params, Strategy


def adam_server_step(
    global_params: Params, pseudo_gradient: Params, m: Params, v: Params, *, lr: float, beta1: float, beta2: float, tau: float
) -> tuple[Params, Params, Params]:
    """One FedAdam step; returns (params, m, v). Pure function."""
    new_m = {k: beta1 * m[k] + (1 - beta1) * g for k, g in pseudo_gradient.items()}
    new_v = {k: beta2 * v[k] + (1 - beta2) * g * g for k, g in pseudo_gradient.items()}
    new_params = {k: global_params[k] + lr * new_m[k] / (new_v[k].sqrt() + tau) for k in pseudo_gradient}
    return new_params, new_m, new_v


class FedAdam(Strategy):
    name = "fedadam"

    def __init__(self, server_lr: float | None = None, server_beta1: float = 0.9, server_beta2: float = 0.99, server_tau: float = 1e-3):
        self.server_lr = 0.01 if server_lr is None else server_lr
        if self.server_lr <= 0 or server_tau <= 0 or not (0 <= server_beta1 < 1 and 0 <= server_beta2 < 1):
            raise ValueError("FedAdam needs server_lr > 0, server_tau > 0 and betas in [0, 1)")
        self.beta1, self.beta2, self.tau = server_beta1, server_beta2, server_tau
        self.m: Params = {}
        self.v: Params = {}

    def aggregate(
        self, server_round: int, global_params: Params, results: list[ClientResult], failures: list[ClientFailure]
    ) -> Params:
        if not results:
            return self.keep(global_params)
        averaged = self.average(results, global_params)
        floats = [k for k, v in global_params.items() if torch.is_floating_point(v)]
        if not self.m:
            self.m = {k: torch.zeros_like(global_params[k]) for k in floats}
            self.v = {k: torch.zeros_like(global_params[k]) for k in floats}
        pseudo_gradient = {k: averaged[k] - global_params[k] for k in floats}
        stepped, self.m, self.v = adam_server_step(
            {k: global_params[k] for k in floats}, pseudo_gradient, self.m, self.v,
            lr=self.server_lr, beta1=self.beta1, beta2=self.beta2, tau=self.tau,
        )
        return {**averaged, **stepped}

    def state_dict(self) -> dict[str, Any]:
        return {"m": {k: t.clone() for k, t in self.m.items()}, "v": {k: t.clone() for k, t in self.v.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.m = {k: t.clone() for k, t in state["m"].items()}
        self.v = {k: t.clone() for k, t in state["v"].items()}
