"""MLflow tracking for runs: params, per-round metrics, artifacts, the model.

The loop logs through :class:`MlflowRun` with plain ``mlflow`` calls
(Lightning's ``MLFlowLogger`` would use the file store and end the run on
``finalize``). A run that fails is ended FAILED (KILLED on Ctrl-C or
SIGTERM, see :func:`fedlight.interrupts.terminate_as_interrupt`), never left RUNNING.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from torch import nn

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"

# MLflow warns about pip version inference and similar on every model log.
logging.getLogger("mlflow").setLevel(logging.ERROR)


def resolve_tracking_uri(tracking_uri: str | None) -> str:
    """The given URI, else ``$MLFLOW_TRACKING_URI``, else SQLite under ``mlruns/``."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return uri


def prepare_tracking_store(tracking_uri: str | None, experiments: Iterable[str]) -> None:
    """Create the tracking store's schema and these experiments from one process.

    Two processes that open a new SQLite store at once both run MLflow's
    schema migrations, and one fails ("duplicate column name: step");
    parallel workers must start from a store that exists.
    """
    client = mlflow.MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri))
    for name in set(experiments):
        if client.get_experiment_by_name(name) is None:
            client.create_experiment(name)


class MlflowRun:
    """A context manager around one MLflow run that also listens to the loop's rounds."""

    def __init__(
        self,
        *,
        tracking_uri: str | None,
        experiment: str,
        run_name: str | None = None,
        tags: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        parent_run_id: str | None = None,
    ):
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.experiment = experiment
        self.run_name = run_name
        self.tags = tags or {}
        self.params = params or {}
        self.parent_run_id = parent_run_id
        self.run_id: str | None = None

    def __enter__(self) -> MlflowRun:
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_experiment(self.experiment)
        run = mlflow.start_run(run_name=self.run_name, tags=self.tags, parent_run_id=self.parent_run_id, nested=self.parent_run_id is not None)
        self.run_id = run.info.run_id
        if self.params:
            mlflow.log_params({k: ("" if v is None else v) for k, v in self.params.items()})
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            status = "FINISHED"
        elif issubclass(exc_type, KeyboardInterrupt):
            status = "KILLED"
        elif getattr(exc, "mlflow_status", None):  # e.g. a pruned sweep trial
            status = exc.mlflow_status
            mlflow.set_tag("stopped", f"{exc_type.__name__}: {exc}"[:5000])
        else:
            status = "FAILED"
            mlflow.set_tag("error", f"{exc_type.__name__}: {exc}"[:5000])
        mlflow.end_run(status=status)
        return False

    def on_round_end(self, server_round: int, metrics: dict[str, float]) -> None:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=server_round)

    def log_dict(self, data: Any, path: str) -> None:
        mlflow.log_dict(data, path)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_figure(self, figure, path: str) -> None:
        import matplotlib.pyplot as plt

        mlflow.log_figure(figure, path)
        plt.close(figure)

    def log_model(self, model: nn.Module, *, example: torch.Tensor, registered_model: str | None) -> str:
        """Log the model (pickle format, so loading gives back our class) with a signature.

        The requirements are given (:func:`model_requirements`): without them
        MLflow infers them by importing the model's modules in a subprocess,
        about 21 s on 2 cores.
        """
        from mlflow.models import infer_signature

        model.eval()
        example_np = example.numpy().astype(np.float32)
        with torch.no_grad():
            output = model(example).numpy()
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            signature=infer_signature(example_np, output),
            input_example=example_np,
            registered_model_name=registered_model,
            serialization_format="pickle",
            pip_requirements=model_requirements(),
        )
        return info.model_uri


def model_requirements() -> list[str]:
    """What loading a logged model needs: torch and numpy at the installed versions, and fedlight's classes."""
    from importlib.metadata import PackageNotFoundError, version

    requirements = []
    for package in ("torch", "numpy", "fedlight"):
        try:
            requirements.append(f"{package}=={version(package).split('+')[0]}")
        except PackageNotFoundError:
            continue
    return requirements
