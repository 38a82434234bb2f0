"""Wire a :class:`RunConfig` into data, model, strategy, loop and MLflow run.

Everything that can be checked before training (names, data, paths) is
checked before the MLflow run starts, so bad input leaves no run behind; a
failure after that ends the run FAILED.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow
import torch

from fedlight.compat import check_model_support
from fedlight.config import RunConfig, default_partition, party_comparing_rule_refusal, validate
from fedlight.data import FederatedData, SourceOptions, build_federated_data, load_source
from fedlight.errors import ConfigError
from fedlight.execution import ClientExecutor, build_executor
from fedlight.faults import RoundFaults, build_round_faults
from fedlight.loop import FederatedLoop, ProgressReporter, RoundListener, resolve_accelerator
from fedlight.models import build_model, describe_model
from fedlight.plots import alpha_figure, alpha_series, convergence_figure
from fedlight.privacy import ClientLevelDP, SampleLevelDP
from fedlight.resume import ResumePlan, begin_run_checkpoints, finish_run_checkpoints, params_digest, restore_run
from fedlight.state import ClientStateStore
from fedlight.strategies import Strategy, build_strategy
from fedlight.strategies.adaptive import AdaptiveTrust
from fedlight.strategies.robust import RobustStrategy
from fedlight.tracking import MlflowRun, default_run_name, federated_dataset, ui_path


def load_federated_data(config: RunConfig) -> FederatedData:
    d = config.data
    options = SourceOptions(
        party_column=d.party_column, label_column=d.label_column, split_column=d.split_column,
        feature_columns=d.feature_columns, categorical_columns=d.categorical_columns, scaling=d.scaling,
        test_fraction=d.test_fraction, data_factory=d.data_factory, heart_disease_mode=d.heart_disease_mode,
    )
    source = load_source(d.dataset, d.data_dir, seed=config.training.seed, options=options)
    return build_federated_data(
        source,
        partition=d.partition or default_partition(d.dataset),
        num_clients=d.num_clients,
        dirichlet_beta=d.dirichlet_beta,
        shards_per_client=d.shards_per_client,
        volume=d.volume,
        val_fraction=d.val_fraction,
        noisy_client_fraction=d.noisy_client_fraction,
        label_noise=d.label_noise,
        label_noise_mode=d.label_noise_mode,
        image_noise_std=d.image_noise_std,
        seed=config.training.seed,
        domain=d.domain,
    )


def make_private_compatible(model: torch.nn.Module) -> torch.nn.Module:
    """Replace layers Opacus cannot handle (BatchNorm -> GroupNorm) once, before training."""
    from opacus.validators import ModuleValidator

    model = ModuleValidator.fix(model)
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise ConfigError(f"model is not compatible with DP-SGD: {errors[0]}")
    return model


def configure_privacy(
    config: RunConfig, *, data: FederatedData, strategy: Strategy, store: ClientStateStore
) -> SampleLevelDP | None:
    """Sample-level DP returns the per-client wrapper; client-level DP replaces the strategy's averager."""
    dp, t = config.privacy, config.training
    if dp.mode == "sample":
        privacy = SampleLevelDP(store=store, clip=dp.clip, delta=dp.delta, accountant=dp.accountant,
                                noise=dp.noise, target_epsilon=dp.epsilon, seed=t.seed,
                                grad_sample_mode=dp.grad_sample_mode)
        privacy.calibrate(
            batches_per_epoch=[math.ceil(c.num_train / t.batch_size) for c in data.clients],
            local_epochs=t.local_epochs, rounds=t.rounds, local_steps=t.local_steps,
        )
        return privacy
    if dp.mode == "client":
        if isinstance(strategy, RobustStrategy):
            raise ConfigError(
                f"strategy {strategy.name} is a robust rule, whose sensitivity is not the mean's that client-level DP's "
                "noise is calibrated to; use it with --dp-mode off or sample"
            )
        if isinstance(strategy, AdaptiveTrust) and strategy.rule.compares_parties:
            raise ConfigError(party_comparing_rule_refusal(strategy.rule.name))
        strategy.averager = ClientLevelDP(
            clip=dp.clip, delta=dp.delta, clients_per_round=t.clients_per_round, num_clients=len(data.clients),
            mean_client_size=float(sum(c.num_train for c in data.clients)) / len(data.clients), rounds=t.rounds,
            accountant=dp.accountant, noise=dp.noise, target_epsilon=dp.epsilon, seed=t.seed,
        )
    return None


def build_executor_from_config(config: RunConfig) -> ClientExecutor:
    ex = config.execution
    if ex.executor == "ray":
        return build_executor("ray", workers=ex.workers, worker_cpus=ex.worker_cpus, worker_gpus=ex.worker_gpus,
                              address=ex.ray_address)
    return build_executor(ex.executor)


def _privacy_summary(privacy: SampleLevelDP | None, strategy: Strategy) -> dict[str, Any] | None:
    if privacy is not None:
        return privacy.summary()
    if isinstance(strategy.averager, ClientLevelDP):
        return strategy.averager.summary()
    return None


def model_info(config: RunConfig, data: FederatedData) -> dict[str, Any]:
    """What a user of the exported model needs: classes, input shape, preprocessing."""
    info: dict[str, Any] = {
        "dataset": data.dataset,
        "model": describe_model(config.training.model),
        "class_names": list(data.class_names),
        "input_shape": list(data.input_shape),
    }
    if len(data.input_shape) == 3:
        info["preprocessing"] = {
            "color": "grayscale, one channel",
            "size": f"resize to {data.input_shape[1]}x{data.input_shape[2]}",
            "scale": "pixel / max -> [0, 1] float32",
            "polarity": "1 = ink, 0 = background (light strokes on a dark background)",
        }
    else:
        info["feature_names"] = list(data.feature_names or ())
        info["preprocessing"] = data.preprocessing
    return info


def run_tags(config: RunConfig) -> dict[str, str]:
    """Tags that make MLflow's compare view useful across strategies."""
    return {
        "strategy": config.strategy.name,
        "alpha_rule": config.strategy.alpha_rule if config.strategy.name == "adaptive" else "-",
        "dataset": config.data.dataset,
        "partition": config.data.partition,
        "model": describe_model(config.training.model),
        "seed": str(config.training.seed),
        "dp_mode": config.privacy.mode,
        "noisy_clients": "yes" if config.data.noisy_client_fraction > 0 and config.data.label_noise + config.data.image_noise_std > 0 else "no",
    }


def _log_alphas(tracker: MlflowRun, history: list[dict[str, float]], data: FederatedData) -> None:
    """The alpha trajectories' plot and the final mean alpha of corrupted vs clean parties (the series are in the
    run's party_metrics.json table)."""
    series = alpha_series(history)
    if not series:
        return
    tracker.log_figure(alpha_figure(series, data.corrupted_clients), "plots/alpha_trajectories.png")
    latest = {cid: points[-1][1] for cid, points in series.items()}
    bad = [a for c, a in latest.items() if c in data.corrupted_clients]
    good = [a for c, a in latest.items() if c not in data.corrupted_clients]
    summary = {"final_alpha_clean_mean": sum(good) / len(good)} if good else {}
    if bad:
        summary["final_alpha_corrupted_mean"] = sum(bad) / len(bad)
    mlflow.log_metrics(summary)


def _finite_or_none(value: Any) -> Any:
    """JSON has no Infinity or NaN: such floats (a round's missing validation loss, say) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def _write_json_atomically(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_finite_or_none(payload), indent=2, allow_nan=False))
    tmp.replace(path)


def run_experiment(
    config: RunConfig,
    *,
    config_path: str | Path | None = None,
    output_json: str | Path | None = None,
    extra_listeners: Sequence[RoundListener] = (),
    progress: bool = True,
    parent_run_id: str | None = None,
    extra_tags: dict[str, str] | None = None,
    resume: ResumePlan | None = None,
) -> dict[str, Any]:
    """Train one federated run, log it to MLflow and return its summary.

    ``resume`` (:func:`fedlight.resume.plan_resume`) continues that run from its last checkpoint.
    """
    started = time.perf_counter()
    validate(config)  # a RunConfig built in Python has not been through build_config
    resolve_accelerator(config.execution.accelerator)  # --accelerator gpu on a machine without one: before any run
    t = config.training
    if output_json is not None:
        output_json = Path(output_json)
        if not output_json.parent.is_dir():
            raise ConfigError(f"--output-json: directory {output_json.parent} does not exist")
    build_strategy(config.strategy.name, config.strategy.options())  # fail on bad options before loading data
    data = load_federated_data(config)
    faults = build_round_faults(config.faults, num_clients=len(data.clients), seed=t.seed)
    if faults.attack is not None:
        faults.attack.poison_data(data)  # label_flip: the Byzantine parties' labels, before anything reads them
    strategy = build_strategy(
        config.strategy.name, {**config.strategy.options(), "excluded_clients": data.corrupted_clients}
    )
    if t.clients_per_round > len(data.clients):
        raise ConfigError(f"--clients-per-round {t.clients_per_round} exceeds the {len(data.clients)} clients")
    torch.manual_seed(t.seed)
    model = build_model(t.model, data.input_shape, data.num_classes, example=data.test_x[:2])
    check_model_support(model, strategy=config.strategy.name, dp_mode=config.privacy.mode,
                        alpha_rule=config.strategy.alpha_rule)
    if config.privacy.mode == "sample":
        model = make_private_compatible(model)
    store = ClientStateStore()
    try:
        privacy = configure_privacy(config, data=data, strategy=strategy, store=store)
        return _train_and_log(
            config, data=data, model=model, strategy=strategy, store=store, privacy=privacy, started=started,
            config_path=config_path, output_json=output_json, listeners=extra_listeners, progress=progress,
            parent_run_id=parent_run_id, extra_tags=extra_tags or {}, resume=resume, faults=faults,
        )
    finally:
        store.close()


def _train_and_log(
    config: RunConfig,
    *,
    data: FederatedData,
    model: torch.nn.Module,
    strategy: Strategy,
    store: ClientStateStore,
    privacy: SampleLevelDP | None,
    started: float,
    config_path: str | Path | None,
    output_json: Path | None,
    listeners: Sequence[RoundListener],
    progress: bool,
    parent_run_id: str | None,
    extra_tags: dict[str, str],
    resume: ResumePlan | None = None,
    faults: RoundFaults | None = None,
) -> dict[str, Any]:
    t = config.training
    tracker = MlflowRun(
        tracking_uri=config.tracking.tracking_uri,
        experiment=config.tracking.experiment,
        run_name=config.tracking.run_name or default_run_name(config),
        tags=run_tags(config) | extra_tags,
        params=config.flat_params(),
        parent_run_id=parent_run_id,
        log_party_metrics=config.tracking.log_party_metrics,
        parties=[c.name for c in data.clients],
        corrupted=data.corrupted_clients,
        resume_run_id=resume.run_id if resume is not None else None,
        logged=resume.logged if resume is not None else None,
    )
    with tracker:
        checkpointer = begin_run_checkpoints(tracker, config, resume)
        tracker.log_dataset(federated_dataset(data, config))
        tracker.log_dict(config.to_dict(), "config/resolved.yaml")
        if faults is not None and faults.attack is not None:
            tracker.log_dict(faults.attack.describe(data), "faults/byzantine.json")
        if config_path is not None:
            tracker.log_artifact(config_path, "config")
        tracker.log_dict(
            {
                # describe() counts the corrupted clients; the list goes after it so that it is kept
                **data.describe(),
                "corrupted_clients": data.corrupted_clients,
                "corrupted_client_names": [data.clients[c].name for c in data.corrupted_clients],
            },
            "data/clients.json",
        )
        if data.preprocessing:
            tracker.log_dict(data.preprocessing, "data/preprocessing.json")
        loop = FederatedLoop(
            model=model,
            data=data,
            strategy=strategy,
            rounds=t.rounds,
            clients_per_round=t.clients_per_round,
            local_epochs=t.local_epochs,
            local_steps=t.local_steps,
            batch_size=t.batch_size,
            lr=t.lr,
            momentum=t.momentum,
            eval_every=t.eval_every,
            seed=t.seed,
            # the checkpointer first: a round is saved before a listener (Optuna's pruning) can stop the run
            listeners=[*([checkpointer] if checkpointer else []), tracker, *listeners,
                       *([ProgressReporter(t.rounds)] if progress else [])],
            store=store,
            privacy=privacy,
            # client-level DP's accountant assumes each party is selected independently (see fedlight.privacy)
            client_sampling="poisson" if config.privacy.mode == "client" else "fixed",
            executor=build_executor_from_config(config),
            min_clients=config.execution.min_clients,
            accelerator=config.execution.accelerator,
            faults=faults,
        )
        restore_run(loop, tracker, checkpointer, resume)
        history = loop.run()
        final = loop.final_metrics()
        tracker.log_metrics({f"final_{k}": v for k, v in final.items()} | {"wall_time_s": time.perf_counter() - started})
        tracker.log_dict(history, "history.json")
        if faults is not None and faults.failure_log:
            tracker.log_table(faults.failure_table(), "faults/failures.json")
        _log_alphas(tracker, history, data)
        tracker.log_figure(
            convergence_figure(history, title=f"{config.strategy.name} on {config.data.dataset} ({config.data.partition})"),
            "plots/convergence.png",
        )
        tracker.log_dict(model_info(config, data), "model_info.json")
        model_uri = tracker.log_model(model, example=data.test_x[:2].clone(), registered_model=config.tracking.registered_model)
        mlflow.set_tag("model_uri", model_uri)
        summary = {
            "run_id": tracker.run_id,
            "run_name": tracker.run_name,
            "experiment": config.tracking.experiment,
            "experiment_id": tracker.experiment_id,
            "ui_path": ui_path(tracker.experiment_id),
            "tracking_uri": tracker.tracking_uri,
            "strategy": config.strategy.name,
            "rounds": t.rounds,
            "final": final,
            "history": history,
            "wall_time_s": time.perf_counter() - started,
            "model_uri": model_uri,
            "params_sha256": params_digest(loop.global_params()),
        }
        privacy_summary = _privacy_summary(privacy, strategy)
        if privacy_summary is not None:
            summary["privacy"] = privacy_summary
            mlflow.log_metrics({"final_dp_epsilon_max": privacy_summary["epsilon_max"],
                                "dp_noise_multiplier": privacy_summary["noise"]})
            tracker.log_dict(privacy_summary, "privacy.json")
        if output_json is not None:
            _write_json_atomically(output_json, summary)
        finish_run_checkpoints(checkpointer, config)
    return summary
