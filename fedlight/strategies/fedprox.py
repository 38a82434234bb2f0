"""FedProx: Li et al., "Federated Optimization in Heterogeneous Networks" (MLSys 2020).

Each client minimises its loss plus mu/2 * ||w - w_global||^2, which limits
client drift on heterogeneous data; the server averages like FedAvg.
Hyperparameter: ``prox_mu`` (mu >= 0; mu = 0 is FedAvg; the paper tunes it
in {0.001, 0.01, 0.1, 1}).
"""

from __future__ import annotations

from fedlight.callbacks import ProximalTerm
from fedlight.strategies.base import ClientPlan, Params
from fedlight.strategies.fedavg import FedAvg


class FedProx(FedAvg):
    name = "fedprox"

    def __init__(self, prox_mu: float = 0.01):
        if prox_mu < 0:
            raise ValueError(f"prox_mu must be non-negative, got {prox_mu}")
        self.prox_mu = prox_mu

    def configure_round(self, server_round: int, client_ids: list[int], global_params: Params) -> list[ClientPlan]:
        return [ClientPlan(client_id=c, callbacks=[ProximalTerm(self.prox_mu)]) for c in client_ids]
