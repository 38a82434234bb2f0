"""FedAvg: McMahan et al., "Communication-Efficient Learning of Deep Networks
from Decentralized Data" (AISTATS 2017).

The next global model is the average of the returned local models weighted by
each client's number of training samples. No hyperparameters of its own
(local epochs, batch size and learning rate belong to the loop). Failed
clients are left out of the average; if none succeeded the global model is
kept.
"""

from __future__ import annotations

from fedlight.strategies.base import ClientFailure, ClientResult, Params, Strategy


class FedAvg(Strategy):
    name = "fedavg"

    def aggregate(
        self,
        server_round: int,
        global_params: Params,
        results: list[ClientResult],
        failures: list[ClientFailure],
    ) -> Params:
        if not results:
            return self.keep(global_params)
        return self.average(results, global_params)
