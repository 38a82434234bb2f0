"""The strategy interface, after Flower's ``Strategy``.

A round is: ``configure_round`` says, for each sampled client, which
Lightning callbacks join its local training (FedProx's proximal term,
SCAFFOLD's correction, MOON's contrastive loss, ...); the loop trains the
clients; ``aggregate`` turns their results (and failures) into the next
global parameters. Per-client state lives in the :class:`ClientStateStore`
handed over in :meth:`Strategy.setup`, never in the strategy's own memory.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from lightning.pytorch import Callback

from fedlight.state import ClientStateStore
from fedlight.strategies.aggregation import weighted_average_params

Params = dict[str, torch.Tensor]


@dataclass
class ClientPlan:
    """What one sampled client does this round."""

    client_id: int
    callbacks: list[Callback] = field(default_factory=list)


@dataclass
class ClientResult:
    """What a client sends back after local training.

    ``extras`` is filled by the plan's callbacks through the module's
    ``report`` dict (for example SCAFFOLD's control-variate delta).
    """

    client_id: int
    num_samples: int
    params: Params
    num_steps: int
    train_loss: float
    val_loss: float | None = None
    val_accuracy: float | None = None
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class ClientFailure:
    client_id: int
    error: str


class PlainAverager:
    """Weighted mean of the client models with weights n_i * t_i (t_i: the strategy's trust, default 1).

    The seam where client-level DP (:class:`fedlight.privacy.ClientLevelDP`)
    replaces plain averaging for every strategy.
    """

    def average(self, results: list[ClientResult], global_params: Params, trust: torch.Tensor | None = None) -> Params:
        sizes = torch.tensor([r.num_samples for r in results], dtype=torch.float64)
        weights = sizes if trust is None else sizes * trust.double()
        if weights.sum() <= 0:
            weights = sizes
        return weighted_average_params([r.params for r in results], weights)

    def keep(self, global_params: Params) -> Params:
        """The next global parameters of a round in which no party's result is usable: unchanged."""
        return global_params

    def round_metrics(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state


class Strategy(ABC):
    """Base class; subclasses set ``name`` and implement :meth:`aggregate`.

    Strategies average client models through :meth:`average`, so that the
    loop can swap in a private averager without touching them.
    """

    name: ClassVar[str]
    averager: PlainAverager = PlainAverager()

    def average(self, results: list[ClientResult], global_params: Params, trust: torch.Tensor | None = None) -> Params:
        return self.averager.average(results, global_params, trust)

    def keep(self, global_params: Params) -> Params:
        """What :meth:`aggregate` returns when no result is usable (the averager's choice, see
        :meth:`fedlight.privacy.ClientLevelDP.keep`)."""
        return self.averager.keep(global_params)

    def setup(self, *, global_params: Params, store: ClientStateStore, num_clients: int) -> None:
        """Called once by the loop before the first round."""
        self.store = store
        self.num_clients = num_clients

    def configure_round(self, server_round: int, client_ids: list[int], global_params: Params) -> list[ClientPlan]:
        """Plain local training unless a strategy adds client-side callbacks."""
        return [ClientPlan(client_id=c) for c in client_ids]

    @abstractmethod
    def aggregate(
        self,
        server_round: int,
        global_params: Params,
        results: list[ClientResult],
        failures: list[ClientFailure],
    ) -> Params:
        """Return the next global parameters (:meth:`keep` of them if nothing usable came back)."""

    def round_metrics(self) -> dict[str, float]:
        """Extra per-round metrics to log (e.g. per-party trust weights)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state
