"""Aggregation strategies: one class per file, registered here by name.

A strategy of your own joins the registry with :func:`register_strategy`,
as a decorator or a call, and is then built by :func:`build_strategy` like
the built-ins::

    from fedlight.strategies import FedAvg, register_strategy

    @register_strategy
    class FedMedian(FedAvg):
        name = "fedmedian"
        ...

    register_strategy(MyStrategy, name="mine")   # or under another name

A strategy whose client callbacks need the model's ``embed``/``head`` (as
MOON's loss term does) says so with the class attribute
``needs_embedding = True``; one whose callbacks add loss terms (and so need
fedlight's own training step) sets ``needs_client_module = True``.
:func:`fedlight.compat.check_model_support` reads both.
"""

from __future__ import annotations

import inspect
from typing import Any, TypeVar

from fedlight.errors import ConfigError
from fedlight.strategies.adaptive import AdaptiveTrust
from fedlight.strategies.base import ClientFailure, ClientPlan, ClientResult, Params, Strategy
from fedlight.strategies.bulyan import Bulyan
from fedlight.strategies.centered_clipping import CenteredClipping
from fedlight.strategies.fedadam import FedAdam
from fedlight.strategies.fedavg import FedAvg
from fedlight.strategies.fedprox import FedProx
from fedlight.strategies.krum import Krum
from fedlight.strategies.median import Median
from fedlight.strategies.moon import Moon
from fedlight.strategies.multi_krum import MultiKrum
from fedlight.strategies.oracle import OracleFedAvg
from fedlight.strategies.scaffold import Scaffold
from fedlight.strategies.trimmed_mean import TrimmedMean

S = TypeVar("S", bound=type[Strategy])

STRATEGIES: dict[str, type[Strategy]] = {}
BUILTIN_STRATEGIES: frozenset[str] = frozenset()


def _register(cls: type[Strategy], name: str | None) -> type[Strategy]:
    if not inspect.isclass(cls) or not issubclass(cls, Strategy):
        raise ConfigError(f"register_strategy: {cls!r} is not a subclass of fedlight.strategies.Strategy")
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ())))
        raise ConfigError(f"register_strategy: {cls.__qualname__} does not implement {missing}")
    if name is None:
        # its own, not one inherited from the strategy it extends (FedAvg's "fedavg")
        name = cls.__dict__.get("name")
        if not isinstance(name, str):
            raise ConfigError(
                f"register_strategy: {cls.__qualname__} has no name of its own; set the class attribute name or pass name="
            )
    if not isinstance(name, str) or not name or name != name.strip() or any(c.isspace() for c in name):
        raise ConfigError(f"register_strategy: strategy name {name!r} must be a non-empty word")
    if name in STRATEGIES:
        raise ConfigError(f"register_strategy: a strategy named {name!r} is already registered ({STRATEGIES[name].__qualname__})")
    if not isinstance(cls.__dict__.get("name"), str):
        cls.name = name
    STRATEGIES[name] = cls
    return cls


def register_strategy(cls: S | str | None = None, name: str | None = None):
    """Add a :class:`Strategy` subclass to :data:`STRATEGIES`, under ``name`` or its ``name`` attribute.

    Usable as ``@register_strategy``, ``@register_strategy(name="x")``,
    ``@register_strategy("x")`` or ``register_strategy(cls, name=None)``;
    returns the class (or, without one, the decorator). Refuses a name
    already registered and a class that is not a concrete Strategy
    subclass, with a :class:`~fedlight.errors.ConfigError` naming it.
    """
    if isinstance(cls, str):
        if name is not None:
            raise ConfigError("register_strategy: give the name once")
        cls, name = None, cls
    if cls is None:
        def decorator(target: S) -> S:
            return _register(target, name)

        return decorator
    return _register(cls, name)


def unregister_strategy(name: str) -> type[Strategy]:
    """Remove a strategy registered with :func:`register_strategy` (built-ins stay); returns its class."""
    if name in BUILTIN_STRATEGIES:
        raise ConfigError(f"strategy {name!r} is built in and cannot be unregistered")
    if name not in STRATEGIES:
        raise ConfigError(f"no strategy named {name!r} is registered")
    return STRATEGIES.pop(name)


for _builtin in (FedAvg, FedProx, Scaffold, Moon, FedAdam, AdaptiveTrust, OracleFedAvg, Median, TrimmedMean, Krum, MultiKrum,
                 Bulyan, CenteredClipping):
    register_strategy(_builtin)
BUILTIN_STRATEGIES = frozenset(STRATEGIES)
del _builtin


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


__all__ = [
    "BUILTIN_STRATEGIES", "STRATEGIES", "AdaptiveTrust", "ClientFailure", "ClientPlan", "ClientResult", "FedAdam",
    "FedAvg", "FedProx", "Moon", "OracleFedAvg", "Params", "Scaffold", "Strategy", "build_strategy",
    "register_strategy", "strategy_options", "unregister_strategy",
]
