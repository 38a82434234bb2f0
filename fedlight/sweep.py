"""Hyperparameter sweeps: a persistent Optuna study over fedlight runs, tracked in MLflow.

A sweep file (YAML) holds the study's name, its objective(s), the search
space over dotted config keys, and the base run config::

    study: digits-lr
    n_trials: 8
    objectives: [accuracy]            # or [accuracy, epsilon] for the Pareto front
    pruner: median                    # median | hyperband | none
    register_as: fedlight-digits-sweep
    space:
      training.lr: {type: float, low: 0.01, high: 0.3, log: true}
      strategy.alpha_rule: {type: categorical, choices: [uniform, loss, similarity, global_loss, quality]}
    base:                             # an ordinary run config (sections data/training/...)
      data: {dataset: digits}

The study lives in an Optuna storage (SQLite under ``sweeps/`` by default), so
running the same sweep again continues it, and several worker processes can
share it. Trials keep a heartbeat: a trial whose worker died is marked FAILED
once its heartbeat is stale, and never stays RUNNING; Optuna then queues a
retry of it with the same parameters (up to ``max_retry`` times,
:class:`optuna.storages.RetryHeartbeatStaleTrialCallback`), and the retry
resumes the dead trial's MLflow run from its last round checkpoint
(:mod:`fedlight.resume`) instead of training from round 1. MLflow gets one parent
run per study (its id is kept in the study, so a resumed sweep reuses it) and
one nested child run per trial.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import optuna
from mlflow.exceptions import MlflowException

from fedlight.config import SECTIONS, build_config, load_yaml
from fedlight.errors import ConfigError, FedlightError
from fedlight.tracking import default_run_name, ensure_experiment, resolve_tracking_uri

OBJECTIVES = {"accuracy": "maximize", "epsilon": "minimize"}
PRUNERS = ("median", "hyperband", "none")
PARENT_RUN_ATTR = "mlflow_parent_run_id"
# a trial's run, and the runs of its retries (the same run, resumed), carry the number of the first try
FIRST_TRIAL_TAG = "optuna_first_trial"


@dataclass
class SweepConfig:
    study: str
    base: dict[str, Any]
    space: dict[str, dict[str, Any]]
    objectives: list[str] = field(default_factory=lambda: ["accuracy"])
    n_trials: int = 10
    pruner: str = "median"
    storage: str | None = None
    register_as: str | None = None
    heartbeat_interval: int = 5
    grace_period: int = 20
    max_retry: int = 2


def load_sweep(path: str | Path) -> SweepConfig:
    raw = load_yaml(path)
    known = {f for f in SweepConfig.__dataclass_fields__}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{path}: unknown sweep keys {sorted(unknown)}; known: {sorted(known)}")
    for key in ("study", "base", "space"):
        if key not in raw:
            raise ConfigError(f"{path}: a sweep needs '{key}'")
    sweep = SweepConfig(**raw)
    if not sweep.objectives or any(o not in OBJECTIVES for o in sweep.objectives):
        raise ConfigError(f"{path}: objectives must be a list from {sorted(OBJECTIVES)}, got {sweep.objectives}")
    if sweep.pruner not in PRUNERS:
        raise ConfigError(f"{path}: unknown pruner {sweep.pruner!r}; choose from {', '.join(PRUNERS)}")
    if not isinstance(sweep.n_trials, int) or sweep.n_trials <= 0:
        raise ConfigError(f"{path}: n_trials must be a positive integer")
    for name, spec in sweep.space.items():
        _check_space_entry(name, spec)
    # The base with every searched option at its low end (or first choice) must be a valid run.
    build_config(apply_params(sweep.base, {n: s.get("low", (s.get("choices") or [None])[0]) for n, s in sweep.space.items()}))
    return sweep


def _check_space_entry(name: str, spec: dict[str, Any]) -> None:
    section, _, key = name.partition(".")
    if section not in SECTIONS or key not in SECTIONS[section].__dataclass_fields__:
        raise ConfigError(f"search space: {name!r} is not a config option (section.field)")
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind in ("float", "int"):
        if not all(k in spec for k in ("low", "high")) or spec["low"] >= spec["high"]:
            raise ConfigError(f"search space: {name} needs low < high")
    elif kind == "categorical":
        if not spec.get("choices"):
            raise ConfigError(f"search space: {name} needs a non-empty 'choices' list")
    else:
        raise ConfigError(f"search space: {name} needs type float, int or categorical")


def _distribution(spec: dict[str, Any]) -> optuna.distributions.BaseDistribution:
    """The Optuna distribution of one (checked) search-space entry."""
    if spec["type"] == "float":
        return optuna.distributions.FloatDistribution(spec["low"], spec["high"], log=spec.get("log", False))
    if spec["type"] == "int":
        return optuna.distributions.IntDistribution(spec["low"], spec["high"], log=spec.get("log", False))
    return optuna.distributions.CategoricalDistribution(spec["choices"])


def suggest(trial: optuna.Trial, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    params = {}
    for name, spec in space.items():
        if spec["type"] == "float":
            params[name] = trial.suggest_float(name, spec["low"], spec["high"], log=spec.get("log", False))
        elif spec["type"] == "int":
            params[name] = trial.suggest_int(name, spec["low"], spec["high"], log=spec.get("log", False))
        else:
            params[name] = trial.suggest_categorical(name, spec["choices"])
    return params


def check_stored_space(study: optuna.Study, space: dict[str, dict[str, Any]]) -> None:
    """Refuse a search space that the study's earlier trials cannot share.

    Optuna lets a float or int range change between trials, but not a
    categorical's choices or a parameter's kind; it would fail inside the
    first new trial. Checked before anything is written for the run.
    """
    stored: dict[str, optuna.distributions.BaseDistribution] = {}
    for trial in study.get_trials(deepcopy=False):
        for name, dist in trial.distributions.items():
            stored.setdefault(name, dist)
    for name, dist in stored.items():
        if name not in space:
            continue
        wanted = _distribution(space[name])
        try:
            optuna.distributions.check_distribution_compatibility(dist, wanted)
        except ValueError:
            raise ConfigError(
                f"study {study.study_name!r} searched {name} over {_describe(dist)}, the sweep file now asks for "
                f"{_describe(wanted)}; give the sweep a new study name or keep the old space"
            ) from None


def _describe(dist: optuna.distributions.BaseDistribution) -> str:
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return f"choices {list(dist.choices)}"
    return f"{type(dist).__name__.removesuffix('Distribution').lower()} [{dist.low}, {dist.high}]"


def apply_params(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    sections = copy.deepcopy(base)
    for name, value in params.items():
        section, _, key = name.partition(".")
        sections.setdefault(section, {})[key] = value
    return sections


def make_storage(url: str, *, heartbeat_interval: int = 5, grace_period: int = 20,
                 max_retry: int = 2) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats; SQLite waits for locks instead of failing.

    A trial whose heartbeat went stale is queued again, ``max_retry`` times at
    most, with its parameters and the values it reported (so that pruning
    compares its resumed rounds with the others').
    """
    with warnings.catch_warnings():  # the retry callback is marked experimental (since Optuna 2.8)
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry, inherit_intermediate_values=True)
    creating: contextlib.AbstractContextManager = contextlib.nullcontext()
    if url.startswith("sqlite:///"):
        db = Path(url.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
        # two workers opening a new file at once both create its tables, and one fails ("table ... already exists")
        creating = _file_lock(db.with_name(f".{db.name}.lock"))
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    try:
        with creating:
            return optuna.storages.RDBStorage(
                url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                heartbeat_stale_trial_callback=retry,
            )
    except Exception as exc:  # sqlalchemy.exc.ArgumentError and friends: a malformed URL
        raise ConfigError(f"cannot open Optuna storage {url!r}: {exc}") from None


class PrunedRun(optuna.TrialPruned):
    """Pruning that ends the trial's MLflow run KILLED (tagged pruned), not FAILED."""

    mlflow_status = "KILLED"


class PruningListener:
    """Reports test accuracy to Optuna after each evaluation and prunes bad trials."""

    def __init__(self, trial: optuna.Trial):
        self.trial = trial

    def on_round_end(self, server_round: int, metrics: dict[str, float]) -> None:
        if "test_accuracy" not in metrics:
            return
        self.trial.report(metrics["test_accuracy"], step=server_round)
        if self.trial.should_prune():
            mlflow.set_tag("optuna_state", "PRUNED")
            _drop_checkpoints()  # a pruned trial is never resumed
            raise PrunedRun(f"pruned at round {server_round}")


def _drop_checkpoints() -> None:
    """Remove the active run's checkpoint folder (:mod:`fedlight.checkpoints`), if it has one."""
    from fedlight.checkpoints import CHECKPOINT_TAG, remove_checkpoints

    active = mlflow.active_run()
    if active is None:
        return
    folder = mlflow.MlflowClient().get_run(active.info.run_id).data.tags.get(CHECKPOINT_TAG)
    if folder:
        remove_checkpoints(folder)


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _parent_run(study: optuna.Study, client: mlflow.MlflowClient, experiment: str, lock_path: Path) -> str:
    """The study's MLflow parent run, created once (under a file lock shared by workers)."""
    with _file_lock(lock_path):
        run_id = study.user_attrs.get(PARENT_RUN_ATTR)
        if run_id is None:
            experiment_id = ensure_experiment(client, experiment)
            run = client.create_run(experiment_id, run_name=f"study-{study.study_name}",
                                    tags={"optuna_study": study.study_name, "sweep": "parent"})
            run_id = run.info.run_id
            study.set_user_attr(PARENT_RUN_ATTR, run_id)
        else:
            client.update_run(run_id, status="RUNNING")
        return run_id


def _fail_orphaned_child_runs(study: optuna.Study, client: mlflow.MlflowClient, parent_id: str) -> None:
    """End FAILED the MLflow runs of trials whose worker died (their Optuna trial is no longer RUNNING)."""
    running = {t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))}
    experiment_id = client.get_run(parent_id).info.experiment_id
    orphans = client.search_runs(
        [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}' and attributes.status = 'RUNNING'"
    )
    for run in orphans:
        trial = run.data.tags.get("optuna_trial")
        if trial is not None and int(trial) not in running:
            client.set_tag(run.info.run_id, "error", "worker died; Optuna marked the trial failed")
            client.set_terminated(run.info.run_id, status="FAILED")


def retried_trial_number(trial: optuna.Trial) -> int | None:
    """The number of the trial this one retries (the first of a chain of retries), or None.

    Optuna's helper reads a trial's system attributes, which only the stored (frozen) trial has in Optuna 5.
    """
    frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)


def _resume_dead_trial(client: mlflow.MlflowClient, parent_id: str, study: str, first: int, config) -> Any:
    """The resume plan of the MLflow run of a retried trial's dead predecessor, or None to start afresh.

    None when that run cannot be found, finished, or differs from this
    trial's config or code (:func:`fedlight.resume.plan_resume` says why,
    as a tag on the parent run).
    """
    from fedlight.resume import plan_resume

    experiment_id = client.get_run(parent_id).info.experiment_id
    runs = client.search_runs(
        [experiment_id], max_results=1, order_by=["attributes.start_time DESC"],
        filter_string=(f"tags.mlflow.parentRunId = '{parent_id}' and tags.optuna_study = '{study}' "
                       f"and tags.{FIRST_TRIAL_TAG} = '{first}'"),
    )
    if not runs or runs[0].info.status == "FINISHED":
        return None
    try:
        return plan_resume(runs[0].info.run_id, tracking_uri=config.tracking.tracking_uri, yaml_values=config.to_dict())
    except ConfigError as exc:
        client.set_tag(parent_id, f"retry_from_scratch.trial{first}", str(exc)[:5000])
        return None


def _objective_values(summary: dict[str, Any], objectives: list[str]) -> list[float]:
    values = []
    for name in objectives:
        if name == "accuracy":
            values.append(summary["final"]["accuracy"])
        else:
            privacy = summary.get("privacy")
            if privacy is None:
                raise ConfigError("objective 'epsilon' needs a DP run (set privacy.mode or privacy.noise)")
            values.append(privacy["epsilon_max"])
    return values


def run_sweep(
    sweep: SweepConfig,
    *,
    storage: str | None = None,
    tracking_uri: str | None = None,
    n_trials: int | None = None,
    sweeps_dir: str | Path = "sweeps",
) -> optuna.Study:
    """Run (or continue) the study until it holds ``n_trials`` finished trials."""
    from fedlight.experiment import run_experiment

    sweeps_dir = Path(sweeps_dir)
    storage_url = storage or sweep.storage or f"sqlite:///{sweeps_dir}/optuna.db"
    total_trials = n_trials or sweep.n_trials
    base = copy.deepcopy(sweep.base)
    base.setdefault("tracking", {})
    if tracking_uri:
        base["tracking"]["tracking_uri"] = tracking_uri
    experiment = base["tracking"].get("experiment") or f"sweep-{sweep.study}"
    base["tracking"].update(experiment=experiment, registered_model=None)
    uri = resolve_tracking_uri(base["tracking"].get("tracking_uri"))
    base["tracking"]["tracking_uri"] = uri
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)

    pruner = {"median": optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
              "hyperband": optuna.pruners.HyperbandPruner(),
              "none": optuna.pruners.NopPruner()}[sweep.pruner if len(sweep.objectives) == 1 else "none"]
    try:
        study = optuna.create_study(
            study_name=sweep.study, load_if_exists=True, pruner=pruner,
            storage=make_storage(storage_url, heartbeat_interval=sweep.heartbeat_interval, grace_period=sweep.grace_period,
                                 max_retry=sweep.max_retry),
            directions=[OBJECTIVES[o] for o in sweep.objectives],
            sampler=optuna.samplers.TPESampler(seed=None),
        )
    except ValueError as exc:  # e.g. the stored study has other directions
        raise ConfigError(f"study {sweep.study!r}: {exc}") from None
    check_stored_space(study, sweep.space)
    optuna.storages.fail_stale_trials(study)
    lock_path = sweeps_dir / f".{sweep.study}.lock"
    parent_id = _parent_run(study, client, experiment, lock_path)
    _fail_orphaned_child_runs(study, client, parent_id)

    def objective(trial: optuna.Trial):
        params = suggest(trial, sweep.space)
        sections = apply_params(base, params)
        config = build_config(sections)
        # what the trial ran (its searched alpha rule, say) and its number: adaptive-quality-digits-s0-trial3
        config.tracking.run_name = f"{config.tracking.run_name or default_run_name(config)}-trial{trial.number}"
        listeners = [PruningListener(trial)] if len(sweep.objectives) == 1 else []
        first = retried_trial_number(trial)
        resume = _resume_dead_trial(client, parent_id, sweep.study, first, config) if first is not None else None
        tags = {"optuna_study": sweep.study, "optuna_trial": str(trial.number),
                FIRST_TRIAL_TAG: str(first if first is not None else trial.number)}
        summary = run_experiment(config, extra_listeners=listeners, progress=False, parent_run_id=parent_id,
                                 extra_tags=tags, resume=resume)
        values = _objective_values(summary, sweep.objectives)
        trial.set_user_attr("mlflow_run_id", summary["run_id"])
        trial.set_user_attr("model_uri", summary["model_uri"])
        client.set_tag(summary["run_id"], "optuna_state", "COMPLETE")
        for name, value in zip(sweep.objectives, values):
            client.log_metric(summary["run_id"], f"objective_{name}", value)
        return values[0] if len(values) == 1 else tuple(values)

    # other workers' running trials count too: two workers on a study of n trials stop at n, not n + 1
    counted_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING)
    status = "FINISHED"
    try:
        remaining = total_trials - len(study.get_trials(deepcopy=False, states=counted_states))
        if remaining > 0:
            study.optimize(
                objective, n_trials=remaining, catch=(FedlightError,),
                callbacks=[optuna.study.MaxTrialsCallback(total_trials, states=counted_states)],
            )
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        _finish_parent(study, client, parent_id, sweep, status, lock_path=lock_path)
    return study


def _finish_parent(study: optuna.Study, client: mlflow.MlflowClient, parent_id: str, sweep: SweepConfig, status: str,
                   *, lock_path: Path) -> None:
    """Best params, optimisation history and (single objective) the champion model on the parent run."""
    from fedlight.plots import optimization_figure

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    client.set_tag(parent_id, "trials_complete", str(len(complete)))
    client.set_tag(parent_id, "trials_pruned", str(len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,)))))
    if complete:
        figure = optimization_figure(study)
        client.log_figure(parent_id, figure, "optimization_history.png")
        import matplotlib.pyplot as plt

        plt.close(figure)
        if len(sweep.objectives) == 1:
            best = study.best_trial
            summary = {"best_trial": best.number, "best_value": best.value, "best_params": best.params,
                       "best_run_id": best.user_attrs.get("mlflow_run_id")}
            for name, value in best.params.items():
                client.set_tag(parent_id, f"best.{name}", str(value))
            client.log_metric(parent_id, "best_accuracy", best.value)
            if sweep.register_as and best.user_attrs.get("model_uri"):
                # every worker and every resume ends here: register the best
                # model once, not once per finish (the lock covers two workers
                # finishing together)
                best_run_id = best.user_attrs.get("mlflow_run_id")
                with _file_lock(lock_path):
                    if not _alias_holds_run(client, sweep.register_as, "champion", best_run_id):
                        register_champion(best.user_attrs["model_uri"], sweep.register_as, client=client,
                                          source_run_id=best_run_id)
                client.set_tag(parent_id, "registered_model", sweep.register_as)
        else:
            summary = {"pareto_front": [{"trial": t.number, "values": t.values, "params": t.params} for t in study.best_trials]}
        client.log_dict(parent_id, summary, "best.json")
    client.set_terminated(parent_id, status=status)


def register_champion(model_uri: str, name: str, *, client: mlflow.MlflowClient, alias: str = "champion",
                      source_run_id: str | None = None) -> int:
    """Register ``model_uri`` as a new version of ``name`` and point ``alias`` at it."""
    version = mlflow.register_model(model_uri, name, tags={"source_run_id": source_run_id or ""})
    client.set_registered_model_alias(name, alias, version.version)
    return int(version.version)


def _alias_holds_run(client: mlflow.MlflowClient, name: str, alias: str, run_id: str | None) -> bool:
    """Whether ``name@alias`` exists and was registered from run ``run_id``."""
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException:  # no such model or alias yet
        return False
    return run_id is not None and version.tags.get("source_run_id") == run_id


def format_results(study: optuna.Study, objectives: list[str]) -> str:
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    counts = {s.name: len(study.get_trials(deepcopy=False, states=(s,))) for s in optuna.trial.TrialState}
    lines = [f"study {study.study_name}: " + ", ".join(f"{k.lower()} {v}" for k, v in counts.items() if v)]
    if not complete:
        return "\n".join(lines + ["no complete trial yet"])
    if len(objectives) == 1:
        best = study.best_trial
        lines.append(f"best trial {best.number}: accuracy={best.value:.4f} params={json.dumps(best.params)}")
    else:
        lines.append("Pareto front (" + " vs ".join(objectives) + "):")
        for t in sorted(study.best_trials, key=lambda t: t.values[0], reverse=True):
            shown = ", ".join(f"{o}={v:.4f}" if math.isfinite(v) else f"{o}={v}" for o, v in zip(objectives, t.values))
            lines.append(f"  trial {t.number}: {shown} params={json.dumps(t.params)}")
    return "\n".join(lines)
