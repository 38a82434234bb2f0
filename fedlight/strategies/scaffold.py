"""SCAFFOLD: Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for
Federated Learning" (ICML 2020), option II control variates.

Clients correct each local gradient by ``c - c_i`` and update their control
variate as ``c_i+ = c_i - c + (x - y_i) / (K * lr)`` with K the local
optimizer steps actually taken (see :class:`~fedlight.callbacks.ScaffoldCorrection`).
The server moves ``x += server_lr * (weighted mean of y_i - x)`` (weights:
sample counts; the paper's uniform mean when clients are equal-sized) and
``c += (1/N) * sum of delta c_i`` over the sampled clients, N = all clients.
Hyperparameter: ``server_lr`` (global step size, default 1).
Client control variates live in the state store (on disk); the server
control variate is one model-sized tensor set kept by the strategy.
"""

from __future__ import annotations

from typing import Any

import torch

from fedlight.callbacks import ScaffoldCorrection
from fedlight.strategies.base import ClientFailure, ClientPlan, ClientResult, Params, Strategy


def scaffold_server_update(
    global_params: Params,
    averaged_params: Params,
    server_control: Params,
    control_deltas: list[Params],
    *,
    num_clients: int,
    server_lr: float,
) -> tuple[Params, Params]:
    """Return the next global params and server control variate (pure function)."""
    new_params = {k: v + server_lr * (averaged_params[k] - v) for k, v in global_params.items()}
    new_control = {}
    for name, c in server_control.items():
        total = torch.zeros_like(c)
        for delta in control_deltas:
            total.add_(delta[name])
        new_control[name] = c + total / num_clients
    return new_params, new_control


class Scaffold(Strategy):
    name = "scaffold"

    def __init__(self, server_lr: float | None = None):
        self.server_lr = 1.0 if server_lr is None else server_lr
        if self.server_lr <= 0:
            raise ValueError(f"server_lr must be positive, got {self.server_lr}")
        self.server_control: Params = {}

    def setup(self, *, global_params: Params, store, num_clients: int) -> None:
        super().setup(global_params=global_params, store=store, num_clients=num_clients)
        if not self.server_control:
            self.server_control = {k: torch.zeros_like(v) for k, v in global_params.items() if torch.is_floating_point(v)}

    def configure_round(self, server_round: int, client_ids: list[int], global_params: Params) -> list[ClientPlan]:
        plans = []
        for cid in client_ids:
            client_control = self.store.get(cid, "scaffold_control")
            if client_control is None:
                client_control = {k: torch.zeros_like(v) for k, v in self.server_control.items()}
            plans.append(
                ClientPlan(
                    client_id=cid,
                    callbacks=[
                        ScaffoldCorrection(server_control=self.server_control, client_control=client_control)
                    ],
                )
            )
        return plans

    def aggregate(
        self, server_round: int, global_params: Params, results: list[ClientResult], failures: list[ClientFailure]
    ) -> Params:
        if not results:
            return self.keep(global_params)
        averaged = self.average(results, global_params)
        trainable = {k: global_params[k] for k in self.server_control}
        new_trainable, self.server_control = scaffold_server_update(
            trainable,
            averaged,
            self.server_control,
            [r.extras["control_delta"] for r in results],
            num_clients=self.num_clients,
            server_lr=self.server_lr,
        )
        return {**averaged, **new_trainable}

    def state_dict(self) -> dict[str, Any]:
        return {"server_control": {k: v.clone() for k, v in self.server_control.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.server_control = {k: v.clone() for k, v in state["server_control"].items()}
