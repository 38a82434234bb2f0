"""MLflow tracking for runs: params, per-round metrics, artifacts, the dataset, the model.

The loop logs through :class:`MlflowRun` with plain ``mlflow`` calls
(Lightning's ``MLFlowLogger`` would use the file store and end the run on
``finalize``). A run that fails is ended FAILED (KILLED on Ctrl-C or
SIGTERM, see :func:`fedlight.interrupts.terminate_as_interrupt`), never left RUNNING.

What the MLflow UI shows first:

- experiments are tagged as model-training experiments
  (:data:`EXPERIMENT_KIND_TAG`, the value MLflow's own kind selector
  writes); MLflow 3.17's UI still picks its GenAI or model-training pages
  from the address or the browser's last choice, so the address fedlight
  prints (:func:`ui_path`) asks for the model-training pages, which open on
  the runs rather than on the GenAI overview;
- the chart view opens on the headline metrics (:data:`HEADLINE_METRICS`,
  ``test_accuracy`` first): MLflow orders its default charts by key,
  prefixed sections first, so ``client_val_*``, ``clients_*`` and
  ``final_*`` would come before ``test_accuracy``. Each experiment gets a
  shared chart view (the experiment tag MLflow's "Share" button writes,
  :func:`headline_chart_view`) whose section keeps its order, with the other
  metrics after the headline ones, and :func:`ui_path` opens it;
- runs are named after what they are (:func:`default_run_name`,
  ``adaptive-quality-femnist-s0``) unless ``tracking.run_name`` says otherwise;
- per-party series (``alpha/<client>``, ``dp_epsilon/<client>``,
  ``test_accuracy_party/<party>``: any metric key with a ``/``) go into one
  table artifact, ``party_metrics.json`` (columns round, client, party,
  corrupted, metric, value), with per-round summaries beside the headline
  metrics (``alpha_mean``/``_min``/``_max``, ``alpha_mean_corrupted`` vs
  ``alpha_mean_clean``, ``dp_epsilon_mean``); ``tracking.log_party_metrics``
  logs the per-party keys as metrics too. On FEMNIST that is up to 600
  series, which would otherwise fill the chart view ahead of ``test_accuracy``;
- the training data is a dataset input (:func:`federated_dataset`): name,
  digest, source and a profile of the parties, never the data itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import torch
from mlflow.data.meta_dataset import MetaDataset
from mlflow.exceptions import MlflowException
from torch import nn

from fedlight.config import ALPHA_RULE_STRATEGIES, RunConfig
from fedlight.errors import ConfigError

if TYPE_CHECKING:
    from fedlight.data import FederatedData

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
# The experiment tag MLflow 3's UI reads for an experiment's kind, and the value its kind selector
# writes for "Machine learning" (model training) rather than "GenAI apps & agents".
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
PARTY_METRICS_ARTIFACT = "party_metrics.json"
# The chart view fedlight's UI address opens: MLflow 3.17 reads a shared view from the experiment tag
# SHARED_VIEW_TAG_PREFIX + key when the address has viewStateShareKey=key.
HEADLINE_METRICS = ("test_accuracy", "test_loss", "test_f1", "train_loss")
SHARED_VIEW_TAG_PREFIX = "mlflow.sharedViewState."
CHART_VIEW_KEY = "fedlight-headline"
# Per-party metric prefixes whose key suffix is the client id (the others name the party).
_CLIENT_ID_KEYED = ("alpha", "dp_epsilon")
DATASET_LOG_ATTEMPTS = 3

# MLflow warns about pip version inference and similar on every model log.
logging.getLogger("mlflow").setLevel(logging.ERROR)


def resolve_tracking_uri(tracking_uri: str | None) -> str:
    """The given URI, else ``$MLFLOW_TRACKING_URI``, else SQLite under ``mlruns/``."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return uri


def ensure_experiment(client: mlflow.MlflowClient, name: str) -> str:
    """The id of experiment ``name``, created as a model-training experiment if it does not exist.

    An existing experiment without the kind tag (made by an older fedlight,
    or by hand) gets it; one whose kind a user has set is left alone.
    """
    experiment = client.get_experiment_by_name(name)
    view_tag = SHARED_VIEW_TAG_PREFIX + CHART_VIEW_KEY
    if experiment is None:
        try:
            return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND,
                                                        view_tag: headline_chart_view()})
        except MlflowException:  # another worker created it first
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        raise ConfigError(f"MLflow experiment {name!r} is deleted; restore it (`mlflow experiments restore "
                          f"--experiment-id {experiment.experiment_id}`) or choose another --experiment")
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
    if view_tag not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, view_tag, headline_chart_view())
    return experiment.experiment_id


def headline_chart_view() -> str:
    """The UI state of a chart view with :data:`HEADLINE_METRICS` first, as MLflow 3.17's UI stores a shared view.

    One "Model metrics" section marked as reordered, so that the UI appends
    the run's other metrics after these charts instead of sorting them in.
    """
    section = "fedlight-model-metrics"
    charts = [
        {"uuid": f"fedlight-{key}", "type": "LINE", "metricKey": key, "displayName": key, "metricSectionId": section,
         "runsCountToCompare": 10, "deleted": False, "isGenerated": True, "lineSmoothness": 0,
         "xAxisScaleType": "linear", "scaleType": "linear", "range": {}, "xAxisKey": "step",
         "selectedXAxisMetricKey": "", "yAxisKey": "metric", "yAxisExpressions": [], "ignoreOutliers": False,
         "useGlobalXaxisKey": True, "useGlobalLineSmoothing": True}
        for key in HEADLINE_METRICS
    ]
    sections = [{"uuid": section, "name": "Model metrics", "display": True, "isReordered": True,
                 "deleted": False, "isGenerated": True}]
    return json.dumps({"compareRunCharts": charts, "compareRunSections": sections, "isAccordionReordered": False})


def prepare_tracking_store(tracking_uri: str | None, experiments: Iterable[str]) -> None:
    """Create the tracking store's schema and these experiments from one process.

    Two processes that open a new SQLite store at once both run MLflow's
    schema migrations, and one fails ("duplicate column name: step");
    parallel workers must start from a store that exists.
    """
    client = mlflow.MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri))
    for name in set(experiments):
        ensure_experiment(client, name)


def ui_path(experiment_id: str) -> str:
    """The MLflow UI's page of an experiment's runs, relative to the UI's address.

    MLflow 3.17's UI takes the kind of page it shows (GenAI or model
    training) from ``workflowType`` in the address, else from the browser's
    last choice, GenAI at first; the experiment tag alone does not switch it.
    The page shows the run list beside the charts, in fedlight's chart view
    (:func:`headline_chart_view`).
    """
    return (f"#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            f"&compareRunsMode=CHART&viewStateShareKey={CHART_VIEW_KEY}")


def default_run_name(config: RunConfig) -> str:
    """``<strategy>[-<alpha rule>]-<dataset>[-dp<mode>-eps<E>|-sigma<S>]-s<seed>``, e.g. ``adaptive-quality-femnist-s0``."""
    parts = [config.strategy.name]
    if config.strategy.name in ALPHA_RULE_STRATEGIES:
        parts.append(config.strategy.alpha_rule)
    parts.append(config.data.dataset)
    dp = config.privacy
    if dp.mode != "off":
        parts.append(f"dp{dp.mode}")
        if dp.epsilon is not None:
            parts.append(f"eps{dp.epsilon:g}")
        elif dp.noise is not None:
            parts.append(f"sigma{dp.noise:g}")
    parts.append(f"s{config.training.seed}")
    return "-".join(parts)


def is_party_metric(key: str) -> bool:
    """Whether a metric key is one party's series (``alpha/3``, ``test_accuracy_party/north``)."""
    return "/" in key


class _FederatedDataset(MetaDataset):
    """A :class:`MetaDataset` with a profile of the parties (MetaDataset itself logs none)."""

    def __init__(self, source, *, name: str, digest: str, schema, profile: dict[str, Any]):
        self._profile = profile
        super().__init__(source, name=name, digest=digest, schema=schema)

    @property
    def profile(self) -> dict[str, Any]:
        return self._profile

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self._profile)}


def _digest(data: FederatedData) -> str:
    """sha256 of every party's name, rows and labels and of the test set, first 8 hex digits."""
    h = hashlib.sha256()

    def update(tensor: torch.Tensor) -> None:
        array = np.ascontiguousarray(tensor.detach().cpu().numpy())
        h.update(f"{array.dtype}{array.shape}".encode())
        if array.size:  # an empty split (--val-fraction 0, a one-row party) has no bytes to view
            h.update(memoryview(array).cast("B"))

    for client in data.clients:
        h.update(client.name.encode())
        for tensor in (client.train_x, client.train_y, client.val_x, client.val_y):
            update(tensor)
    update(data.test_x)
    update(data.test_y)
    return h.hexdigest()[:8]


def federated_dataset(data: FederatedData, config: RunConfig) -> MetaDataset:
    """The run's federation as an MLflow dataset: where it came from, a digest of its contents and its parties.

    The digest hashes the data as trained on (after partitioning and any
    injected corruption), so two runs with the same digest saw the same
    parties; the data itself is not uploaded.
    """
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.types.schema import Schema, TensorSpec

    d = config.data
    if d.data_dir:
        with warnings.catch_warnings():  # MLflow registers its local source class twice and says so
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(str(Path(d.data_dir).resolve()))
    else:
        source = CodeDatasetSource({"fedlight.dataset": d.dataset, **({"data_factory": d.data_factory} if d.data_factory else {})})
    sizes = np.array([c.num_train for c in data.clients])
    profile = {
        "parties": len(data.clients),
        "partition": d.partition,
        "train_rows": int(sizes.sum()),
        "val_rows": int(sum(len(c.val_y) for c in data.clients)),
        "test_rows": len(data.test_y),
        "rows_per_party_min": int(sizes.min()),
        "rows_per_party_median": float(np.median(sizes)),
        "rows_per_party_max": int(sizes.max()),
        "classes": data.num_classes,
        "corrupted_parties": len(data.corrupted_clients),
    }
    schema = Schema([
        TensorSpec(np.dtype(str(data.test_x.dtype).removeprefix("torch.")), (-1, *data.input_shape), "features"),
        TensorSpec(np.dtype(str(data.test_y.dtype).removeprefix("torch.")), (-1,), "label"),
    ])
    return _FederatedDataset(source, name=f"{d.dataset}-{d.partition}-{len(data.clients)}parties",
                             digest=_digest(data), schema=schema, profile=profile)


class MlflowRun:
    """A context manager around one MLflow run that also listens to the loop's rounds.

    ``parties`` are the client names by client id and ``corrupted`` the ids
    of the parties whose data was corrupted on purpose; they label the rows
    of the per-party table and split the alpha summaries.
    """

    def __init__(
        self,
        *,
        tracking_uri: str | None,
        experiment: str,
        run_name: str | None = None,
        tags: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        parent_run_id: str | None = None,
        log_party_metrics: bool = False,
        parties: Sequence[str] = (),
        corrupted: Iterable[int] = (),
        resume_run_id: str | None = None,
        logged: dict[str, set[int]] | None = None,
    ):
        """``resume_run_id`` continues that run (RUNNING again; its params stay, new ones are added)
        instead of starting one; ``logged`` (metric -> steps) are values the run holds and never logs twice."""
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.experiment = experiment
        self.run_name = run_name
        self.tags = tags or {}
        self.params = params or {}
        self.parent_run_id = parent_run_id
        self.log_party_metrics = log_party_metrics
        self.parties = list(parties)
        self.corrupted = set(corrupted)
        self._client_of_party = {name: cid for cid, name in enumerate(self.parties)}
        self._party_rows: list[dict[str, Any]] = []
        self._latest: dict[str, dict[int | str, float]] = {}
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.resume_run_id = resume_run_id
        self.logged = {k: set(v) for k, v in (logged or {}).items()}

    def __enter__(self) -> MlflowRun:
        mlflow.set_tracking_uri(self.tracking_uri)
        params = self.params
        if self.resume_run_id is not None:
            existing = mlflow.MlflowClient(self.tracking_uri).get_run(self.resume_run_id)
            self.experiment_id = existing.info.experiment_id
            mlflow.set_experiment(experiment_id=self.experiment_id)
            run = mlflow.start_run(run_id=self.resume_run_id, tags=self.tags, nested=self.parent_run_id is not None)
            self.run_name = run.info.run_name
            params = {k: v for k, v in params.items() if k not in existing.data.params}  # MLflow never changes a param
        else:
            self.experiment_id = ensure_experiment(mlflow.MlflowClient(self.tracking_uri), self.experiment)
            mlflow.set_experiment(experiment_id=self.experiment_id)
            run = mlflow.start_run(run_name=self.run_name, tags=self.tags, parent_run_id=self.parent_run_id, nested=self.parent_run_id is not None)
        self.run_id = run.info.run_id
        if params:
            mlflow.log_params({k: ("" if v is None else v) for k, v in params.items()})
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        table_error = None
        if exc_type is None:
            # A finished run's table, like its history.json: a failed run that is resumed replays its rounds
            # (fedlight.resume.restore_run), and log_table would append them to a table logged at its failure.
            try:
                self.log_party_table()
            except Exception as error:  # noqa: BLE001 - the run must still end, FAILED
                table_error = error
                exc_type, exc = type(error), error
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
        if table_error is not None:
            raise table_error
        return False

    def _party_row(self, server_round: int, key: str, value: float) -> dict[str, Any]:
        metric, _, party = key.rpartition("/")
        if metric in _CLIENT_ID_KEYED and party.isdigit():
            client: int | None = int(party)
            name = self.parties[client] if client < len(self.parties) else party
        else:
            client, name = self._client_of_party.get(party), party
        return {"round": server_round, "client": client, "party": name,
                "corrupted": client in self.corrupted if client is not None else None,
                "metric": metric, "value": float(value)}

    def _summaries(self) -> dict[str, float]:
        """Summaries over every party's latest alpha and epsilon (the parties not sampled this round included)."""
        summary: dict[str, float] = {}
        alphas = self._latest.get("alpha", {})
        if alphas:
            values = list(alphas.values())
            summary |= {"alpha_mean": float(np.mean(values)), "alpha_min": min(values), "alpha_max": max(values)}
            if self.corrupted:
                bad = [a for c, a in alphas.items() if c in self.corrupted]
                good = [a for c, a in alphas.items() if c not in self.corrupted]
                if bad:
                    summary["alpha_mean_corrupted"] = float(np.mean(bad))
                if good:
                    summary["alpha_mean_clean"] = float(np.mean(good))
        epsilons = self._latest.get("dp_epsilon", {})
        if epsilons:
            summary["dp_epsilon_mean"] = float(np.mean(list(epsilons.values())))
        return summary

    def split_metrics(self, server_round: int, metrics: dict[str, float]) -> dict[str, float]:
        """The metrics to log as keys: per-party ones go to the table (and stay keys with ``log_party_metrics``)."""
        headline = {}
        for key, value in metrics.items():
            if not is_party_metric(key):
                headline[key] = float(value)
                continue
            row = self._party_row(server_round, key, value)
            self._party_rows.append(row)
            self._latest.setdefault(row["metric"], {})[row["client"] if row["client"] is not None else row["party"]] = row["value"]
            if self.log_party_metrics:
                headline[key] = float(value)
        return headline

    def on_round_end(self, server_round: int, metrics: dict[str, float]) -> None:
        headline = self.split_metrics(server_round, metrics)
        self._log_unlogged(headline | self._summaries(), step=server_round)

    def _log_unlogged(self, metrics: dict[str, float], step: int) -> None:
        """Log the values at ``step`` that the run does not hold yet (a resumed run trains some rounds again)."""
        fresh = {k: float(v) for k, v in metrics.items() if step not in self.logged.get(k, ())}
        if fresh:
            mlflow.log_metrics(fresh, step=step)
            for key in fresh:
                self.logged.setdefault(key, set()).add(step)

    def log_metrics(self, metrics: dict[str, float]) -> None:
        """Run-level metrics (``final_*``): per-party keys only with ``log_party_metrics`` (their values are in the table)."""
        self._log_unlogged({k: v for k, v in metrics.items() if self.log_party_metrics or not is_party_metric(k)}, step=0)

    def log_party_table(self) -> None:
        """The per-party series as one table artifact (once; later calls add nothing)."""
        if not self._party_rows:
            return
        columns = ("round", "client", "party", "corrupted", "metric", "value")
        mlflow.log_table({c: [row[c] for row in self._party_rows] for c in columns}, artifact_file=PARTY_METRICS_ARTIFACT)
        self._party_rows = []

    def log_dataset(self, dataset: MetaDataset, context: str = "training") -> None:
        """Log the run's input; runs that log one new dataset at once (parallel pipeline workers or sweep
        trials on one store) race on MLflow's unique (experiment, name, digest) row, and the loser retries:
        the row it lost to is the same dataset, and the retry links the run to it."""
        for attempt in range(DATASET_LOG_ATTEMPTS):
            try:
                mlflow.log_input(dataset, context=context)
                return
            except MlflowException as error:
                if "unique" not in str(error).lower() or attempt == DATASET_LOG_ATTEMPTS - 1:
                    raise

    def log_dict(self, data: Any, path: str) -> None:
        mlflow.log_dict(data, path)

    def log_table(self, table: dict[str, list[Any]], path: str) -> None:
        """Columns as an MLflow table artifact (shown as a table in the UI)."""
        mlflow.log_table(table, artifact_file=path)

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
        with _without_log_time_checks():
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


@contextmanager
def _without_log_time_checks() -> Iterator[None]:
    """Skip two checks MLflow runs while a model is logged; each only ever logs a warning.

    * The given requirements against this environment: they are read from
      it (:func:`model_requirements`), so there is no mismatch to find, and
      the check first maps every installed distribution to its modules (0.4 s).
    * Loading the logged model back through pyfunc to predict on the input
      example (1 s for the LEAF CNN): ``tests/test_cli.py`` loads a logged
      model and serves it through pyfunc instead.
    """
    from mlflow.models import utils as model_utils
    from mlflow.utils import environment

    patched = [(module, name) for module, name in ((environment, "warn_dependency_requirement_mismatches"),
                                                   (model_utils, "_validate_serving_input")) if hasattr(module, name)]
    saved = [getattr(module, name) for module, name in patched]
    for module, name in patched:
        setattr(module, name, lambda *args, **kwargs: None)
    try:
        yield
    finally:
        for (module, name), original in zip(patched, saved):
            setattr(module, name, original)


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
