"""Aggregation strategies: one class per file, registered here by name."""

from __future__ import annotations

from fedlight.errors import ConfigError
from fedlight.strategies.base import ClientFailure, ClientPlan, ClientResult, Params, Strategy
from fedlight.strategies.fedavg import FedAvg

STRATEGIES: dict[str, type[Strategy]] = {
    FedAvg.name: FedAvg,
}


def build_strategy(name: str, **options) -> Strategy:
    """Instantiate a registered strategy with its explicit keyword options."""
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    return STRATEGIES[name](**options)


__all__ = ["STRATEGIES", "ClientFailure", "ClientPlan", "ClientResult", "Params", "Strategy", "build_strategy"]
