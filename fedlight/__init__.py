"""fedlight: federated-learning experiments with Lightning, MLflow and Optuna.

The pieces a notebook needs are importable from here; each is loaded on first
use, so ``import fedlight`` (and the CLI's argument checks) stay fast::

    import fedlight
    config = fedlight.build_config({"data": {"dataset": "heart_disease", "data_dir": "..."}})
    summary = fedlight.run_experiment(config)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "RunConfig": "fedlight.config",
    "build_config": "fedlight.config",
    "load_yaml": "fedlight.config",
    "run_experiment": "fedlight.experiment",
    "load_federated_data": "fedlight.experiment",
    "FederatedLoop": "fedlight.loop",
    "ClientData": "fedlight.data",
    "FederatedData": "fedlight.data",
    "SourceData": "fedlight.data",
    "SourceOptions": "fedlight.data",
    "SOURCES": "fedlight.data",
    "load_source": "fedlight.data",
    "build_federated_data": "fedlight.data",
    "STRATEGIES": "fedlight.strategies",
    "Strategy": "fedlight.strategies",
    "ClientPlan": "fedlight.strategies",
    "ClientResult": "fedlight.strategies",
    "ClientFailure": "fedlight.strategies",
    "build_strategy": "fedlight.strategies",
    "register_strategy": "fedlight.strategies",
    "build_model": "fedlight.models",
    "MODELS": "fedlight.models",
    "ClientStateStore": "fedlight.state",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fedlight' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
