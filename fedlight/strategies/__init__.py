"""Aggregation strategies: one class per file, registered here by name."""

from __future__ import annotations

import inspect
from typing import Any

from fedlight.errors import ConfigError
from fedlight.strategies.adaptive import AdaptiveTrust
from fedlight.strategies.base import ClientFailure, ClientPlan, ClientResult, Params, Strategy
from fedlight.strategies.fedadam import FedAdam
from fedlight.strategies.fedavg import FedAvg
from fedlight.strategies.fedprox import FedProx
from fedlight.strategies.moon import Moon
from fedlight.strategies.oracle import OracleFedAvg
from fedlight.strategies.scaffold import Scaffold

STRATEGIES: dict[str, type[Strategy]] = {
    FedAvg.name: FedAvg,
    FedProx.name: FedProx,
    Scaffold.name: Scaffold,
    Moon.name: Moon,
    FedAdam.name: FedAdam,
    AdaptiveTrust.name: AdaptiveTrust,
    OracleFedAvg.name: OracleFedAvg,
}


def strategy_options(name: str) -> set[str]:
    """The keyword options a registered strategy accepts."""
    return set(inspect.signature(STRATEGIES[name].__init__).parameters) - {"self"}


def build_strategy(name: str, options: dict[str, Any] | None = None) -> Strategy:
    """Instantiate a registered strategy, passing only the options it declares."""
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    accepted = strategy_options(name)
    kwargs = {k: v for k, v in (options or {}).items() if k in accepted and v is not None}
    try:
        return STRATEGIES[name](**kwargs)
    except ValueError as exc:
        raise ConfigError(f"strategy {name}: {exc}") from None


__all__ = ["STRATEGIES", "ClientFailure", "ClientPlan", "ClientResult", "Params", "Strategy", "build_strategy", "strategy_options"]
