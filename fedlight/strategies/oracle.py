"""Oracle FedAvg: FedAvg that gives known-corrupted parties zero weight.

A reference point for experiments with injected data-quality problems or
attacks, not a deployable method: it is told which parties were corrupted
(``excluded_clients``, filled by the runner from the data it built) and
drops every result an injected attack marked Byzantine
(``extras["byzantine"]``, see :mod:`fedlight.attacks`). On clean data it is
FedAvg.
"""

from __future__ import annotations

from collections.abc import Iterable

from fedlight.strategies.base import ClientFailure, ClientResult, Params
from fedlight.strategies.fedavg import FedAvg


class OracleFedAvg(FedAvg):
    name = "oracle"

    def __init__(self, excluded_clients: Iterable[int] = ()):
        self.excluded_clients = frozenset(int(c) for c in excluded_clients)

    def aggregate(
        self, server_round: int, global_params: Params, results: list[ClientResult], failures: list[ClientFailure]
    ) -> Params:
        kept = [r for r in results if r.client_id not in self.excluded_clients and not r.extras.get("byzantine", False)]
        return super().aggregate(server_round, global_params, kept, failures)
