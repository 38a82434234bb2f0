"""MOON: Li, He and Song, "Model-Contrastive Federated Learning" (CVPR 2021).

Local objective: cross-entropy + mu * l_con, where l_con pulls the projection
output z of the local model towards the frozen global model's and away from
the client's frozen previous local model's (see
:class:`~fedlight.callbacks.MoonContrastive`); the server averages like
FedAvg. Hyperparameters: ``moon_mu`` (default 1; the paper uses 1 to 5 and
0.01 to 10 in ablations) and ``moon_tau`` (temperature, default 0.5). The
projection head is the model's ``embed`` output. Previous local models live
in the state store (on disk), one per client that has trained.

MOON needs a model with ``embed(x)`` and ``head(z)`` (every built-in has
them) trained by fedlight's own step, since its term joins the loss:
:func:`fedlight.compat.check_model_support` refuses other models before a
run starts.
"""

from __future__ import annotations

from fedlight.callbacks import MoonContrastive
from fedlight.strategies.base import ClientPlan, Params
from fedlight.strategies.fedavg import FedAvg


class Moon(FedAvg):
    name = "moon"
    # read by fedlight.compat.check_model_support
    needs_embedding = True
    needs_client_module = True

    def __init__(self, moon_mu: float = 1.0, moon_tau: float = 0.5):
        if moon_mu < 0 or moon_tau <= 0:
            raise ValueError(f"moon_mu must be >= 0 and moon_tau > 0, got {moon_mu}, {moon_tau}")
        self.moon_mu = moon_mu
        self.moon_tau = moon_tau

    def configure_round(self, server_round: int, client_ids: list[int], global_params: Params) -> list[ClientPlan]:
        return [
            ClientPlan(
                client_id=c,
                callbacks=[MoonContrastive(mu=self.moon_mu, tau=self.moon_tau, previous=self.store.get(c, "moon_previous"))],
            )
            for c in client_ids
        ]
