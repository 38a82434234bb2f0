"""Typed run configuration, parsed once at the edge (YAML file and CLI flags).

A YAML config has up to four sections, each mapping to one dataclass::

    data:      {dataset: femnist, data_dir: ../shared/data/femnist, partition: natural}
    training:  {model: small_cnn, rounds: 100, clients_per_round: 10, lr: 0.1}
    strategy:  {name: fedavg}
    tracking:  {experiment: femnist-fedavg}

Components never see these objects whole: the CLI unpacks them into explicit
keyword arguments.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fedlight.errors import ConfigError

PARTITIONS = ("natural", "iid", "dirichlet", "shards")

# The built-in names of the heavy registries, in their order (error messages list them so). The
# registries live in modules that import torch; these copies let the CLI refuse a misspelt name
# before importing them. tests/test_config.py checks that each equals its registry.
# Strategies: fedlight.strategies.BUILTIN_STRATEGIES (user-registered ones exist only in Python).
STRATEGY_NAMES = ("fedavg", "fedprox", "scaffold", "moon", "fedadam", "adaptive", "oracle", "median", "trimmed_mean", "krum",
                  "multi_krum", "bulyan", "centered_clipping")
# The built-in strategies that take an alpha rule (fedlight.strategies.strategy_options).
ALPHA_RULE_STRATEGIES = ("adaptive",)
# fedlight.strategies.trust.ALPHA_RULES, and those of its rules with compares_parties=True.
ALPHA_RULE_NAMES = ("uniform", "loss", "similarity", "update_trust", "global_loss", "quality", "label_fit")
PARTY_COMPARING_ALPHA_RULES = ("loss", "similarity", "update_trust", "global_loss")
# fedlight.data.sources.SOURCES.
DATASET_NAMES = ("digits", "femnist", "crossdomain", "table", "heart_disease", "folder", "python")
# fedlight.models.MODELS; any other model is an import path (module:Class or module.Class).
MODEL_NAMES = ("leaf_cnn", "small_cnn", "logreg", "mlp")

LABEL_NOISE_MODES = ("random", "shift")
# fedlight.attacks.ATTACKS (with "none"), and fedlight.strategies.robust.PRE_AGGREGATIONS.
ATTACK_NAMES = ("none", "sign_flip", "gaussian", "scale", "alie", "ipm", "label_flip")
PRE_AGGREGATIONS = ("none", "nnm", "bucketing")
# Datasets whose parties come with the data (writers, hospitals, folders): their default partition is natural.
PARTY_DATASETS = ("femnist", "crossdomain", "table", "heart_disease", "folder", "python")
SCALING_MODES = ("party", "federated", "none")
HEART_DISEASE_MODES = ("flamby", "impute")
# Per-dataset defaults of options that neither the config file nor a flag sets; configs/<dataset>.yaml
# spells them out (tests/test_config.py checks that they agree). FEMNIST's are those of the README's
# results: with the dataclass defaults (5 parties a round, lr 0.05) 100 rounds end about 8 points lower.
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "femnist": {"training.clients_per_round": 10, "training.lr": 0.1, "training.eval_every": 5},
}


@dataclass
class DataConfig:
    """Where the data comes from and how it is split into parties.

    ``partition`` None means natural for datasets with parties of their own
    (:data:`PARTY_DATASETS`) and dirichlet otherwise. The table options
    (``party_column`` ... ``test_fraction``) are described in
    :class:`fedlight.data.sources.SourceOptions`.
    """

    dataset: str = "digits"
    data_dir: str | None = None
    partition: str | None = None
    num_clients: int | None = None
    dirichlet_beta: float = 0.5
    shards_per_client: int = 2
    volume: float = 1.0
    val_fraction: float = 0.1
    noisy_client_fraction: float = 0.0
    label_noise: float = 0.0
    label_noise_mode: str = "random"
    image_noise_std: float = 0.0
    domain: str | None = None
    party_column: str | None = None
    label_column: str | None = None
    split_column: str | None = None
    feature_columns: list[str] | None = None
    categorical_columns: list[str] | None = None
    scaling: str = "party"
    test_fraction: float = 0.34
    data_factory: str | None = None
    heart_disease_mode: str = "flamby"


@dataclass
class TrainingConfig:
    """Local and federated training. ``model`` is a built-in name, an import path
    (``mypkg.nets:Net``) or ``{class_path: ..., init_args: {...}}``; ``local_steps``,
    when set, replaces ``local_epochs`` by that many optimizer steps per round."""

    model: str | dict[str, Any] = "small_cnn"
    rounds: int = 30
    clients_per_round: int = 5
    local_epochs: int = 1
    local_steps: int | None = None
    batch_size: int = 10
    lr: float = 0.05
    momentum: float = 0.0
    eval_every: int = 1
    seed: int = 0


@dataclass
class StrategyConfig:
    """The strategy's name and every strategy's options; each strategy takes the ones it declares."""

    name: str = "fedavg"
    prox_mu: float = 0.01
    server_lr: float | None = None  # None: the strategy's own default (SCAFFOLD 1.0, FedAdam 0.01)
    server_beta1: float = 0.9
    server_beta2: float = 0.99
    server_tau: float = 1e-3
    moon_mu: float = 1.0
    moon_tau: float = 0.5
    alpha_rule: str = "quality"
    alpha_momentum: float = 1.0
    alpha_min: float = 0.0
    alpha_max: float = 1.0
    alpha_temperature: float = 0.5
    alpha_tolerance: float = 0.1
    byzantine_f: int = 1
    pre_aggregation: str = "none"
    bucket_size: int = 2
    clip_tau: float | None = None
    clip_iterations: int = 1
    clip_tau_growth: float = 2.0

    def options(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "name"}


DP_MODES = ("off", "sample", "client")
DP_ACCOUNTANTS = ("rdp", "prv")
DP_GRAD_SAMPLE_MODES = ("ghost", "hooks")


@dataclass
class PrivacyConfig:
    """Differential privacy; ``mode`` becomes "sample" when a noise or epsilon is given without one."""

    mode: str = "off"
    noise: float | None = None
    epsilon: float | None = None
    clip: float = 1.0
    delta: float = 1e-5
    accountant: str = "rdp"
    grad_sample_mode: str = "ghost"


@dataclass
class TrackingConfig:
    """The MLflow run, and the checkpoints that let ``fedlight run --resume`` continue it.

    ``checkpoint_every``: rounds between checkpoints (0: none). Every round by
    default: a checkpoint writes the global state and only the party state
    files that changed since the last one, small next to a round's training,
    and a killed run then loses at most the round it was in.
    ``keep_checkpoints``: keep the run's checkpoint folder after it finishes.
    ``run_name``: the MLflow run's name; None names it after the run
    (:func:`fedlight.tracking.default_run_name`, ``adaptive-quality-femnist-s0``).
    ``log_party_metrics``: also log each party's series (``alpha/<client>``,
    ``dp_epsilon/<client>``, ...) as metric keys; off by default because
    hundreds of parties' charts bury the headline metrics in MLflow's UI, and
    the series are in the run's ``party_metrics.json`` table anyway.
    """

    experiment: str = "fedlight"
    tracking_uri: str | None = None
    run_name: str | None = None
    registered_model: str | None = "fedlight-global"
    checkpoint_every: int = 1
    keep_checkpoints: bool = False
    log_party_metrics: bool = False


@dataclass
class ExecutionConfig:
    executor: str = "sequential"
    workers: int | None = None
    worker_cpus: float = 1.0
    worker_gpus: float = 0.0
    ray_address: str | None = None
    accelerator: str = "cpu"
    min_clients: int = 1


@dataclass
class FaultsConfig:
    """Injected faults and attacks for experiments (all off by default); see :mod:`fedlight.attacks`
    and :mod:`fedlight.faults`."""

    attack: str = "none"
    byzantine_fraction: float = 0.0
    alie_z: float | None = None
    ipm_epsilon: float = 0.5
    gaussian_std: float = 1.0
    attack_scale: float = 10.0
    client_failure_rate: float = 0.0
    client_nan_rate: float = 0.0
    straggler_rate: float = 0.0
    straggler_delay: float = 60.0
    round_deadline: float | None = None


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def flat_params(self) -> dict[str, Any]:
        """``section.field -> value`` for logging as MLflow params."""
        return {
            f"{section}.{key}": value
            for section, values in self.to_dict().items()
            for key, value in values.items()
        }


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "training": TrainingConfig,
    "strategy": StrategyConfig,
    "privacy": PrivacyConfig,
    "tracking": TrackingConfig,
    "execution": ExecutionConfig,
    "faults": FaultsConfig,
}

# CLI flag (without dashes, underscores) -> (section, field). Every flag is an
# override of the YAML value; None means "not given on the command line".
CLI_FIELDS: dict[str, tuple[str, str]] = {
    "dataset": ("data", "dataset"),
    "data_dir": ("data", "data_dir"),
    "partition": ("data", "partition"),
    "num_clients": ("data", "num_clients"),
    "dirichlet_beta": ("data", "dirichlet_beta"),
    "shards_per_client": ("data", "shards_per_client"),
    "volume": ("data", "volume"),
    "val_fraction": ("data", "val_fraction"),
    "noisy_client_fraction": ("data", "noisy_client_fraction"),
    "label_noise": ("data", "label_noise"),
    "label_noise_mode": ("data", "label_noise_mode"),
    "image_noise_std": ("data", "image_noise_std"),
    "domain": ("data", "domain"),
    "party_column": ("data", "party_column"),
    "label_column": ("data", "label_column"),
    "split_column": ("data", "split_column"),
    "feature_columns": ("data", "feature_columns"),
    "categorical_columns": ("data", "categorical_columns"),
    "scaling": ("data", "scaling"),
    "test_fraction": ("data", "test_fraction"),
    "data_factory": ("data", "data_factory"),
    "heart_disease_mode": ("data", "heart_disease_mode"),
    "model": ("training", "model"),
    "rounds": ("training", "rounds"),
    "clients_per_round": ("training", "clients_per_round"),
    "local_epochs": ("training", "local_epochs"),
    "local_steps": ("training", "local_steps"),
    "batch_size": ("training", "batch_size"),
    "lr": ("training", "lr"),
    "momentum": ("training", "momentum"),
    "eval_every": ("training", "eval_every"),
    "seed": ("training", "seed"),
    "strategy": ("strategy", "name"),
    "prox_mu": ("strategy", "prox_mu"),
    "server_lr": ("strategy", "server_lr"),
    "server_beta1": ("strategy", "server_beta1"),
    "server_beta2": ("strategy", "server_beta2"),
    "server_tau": ("strategy", "server_tau"),
    "moon_mu": ("strategy", "moon_mu"),
    "moon_tau": ("strategy", "moon_tau"),
    "alpha_rule": ("strategy", "alpha_rule"),
    "alpha_momentum": ("strategy", "alpha_momentum"),
    "alpha_min": ("strategy", "alpha_min"),
    "alpha_max": ("strategy", "alpha_max"),
    "alpha_temperature": ("strategy", "alpha_temperature"),
    "alpha_tolerance": ("strategy", "alpha_tolerance"),
    "byzantine_f": ("strategy", "byzantine_f"),
    "pre_aggregation": ("strategy", "pre_aggregation"),
    "bucket_size": ("strategy", "bucket_size"),
    "clip_tau": ("strategy", "clip_tau"),
    "clip_iterations": ("strategy", "clip_iterations"),
    "clip_tau_growth": ("strategy", "clip_tau_growth"),
    "executor": ("execution", "executor"),
    "workers": ("execution", "workers"),
    "worker_cpus": ("execution", "worker_cpus"),
    "worker_gpus": ("execution", "worker_gpus"),
    "ray_address": ("execution", "ray_address"),
    "accelerator": ("execution", "accelerator"),
    "min_clients": ("execution", "min_clients"),
    "attack": ("faults", "attack"),
    "byzantine_fraction": ("faults", "byzantine_fraction"),
    "alie_z": ("faults", "alie_z"),
    "ipm_epsilon": ("faults", "ipm_epsilon"),
    "gaussian_std": ("faults", "gaussian_std"),
    "attack_scale": ("faults", "attack_scale"),
    "client_failure_rate": ("faults", "client_failure_rate"),
    "client_nan_rate": ("faults", "client_nan_rate"),
    "straggler_rate": ("faults", "straggler_rate"),
    "straggler_delay": ("faults", "straggler_delay"),
    "round_deadline": ("faults", "round_deadline"),
    "dp_mode": ("privacy", "mode"),
    "dp_noise": ("privacy", "noise"),
    "dp_epsilon": ("privacy", "epsilon"),
    "dp_clip": ("privacy", "clip"),
    "dp_delta": ("privacy", "delta"),
    "dp_accountant": ("privacy", "accountant"),
    "dp_grad_sample_mode": ("privacy", "grad_sample_mode"),
    "experiment": ("tracking", "experiment"),
    "tracking_uri": ("tracking", "tracking_uri"),
    "run_name": ("tracking", "run_name"),
    "registered_model": ("tracking", "registered_model"),
    "checkpoint_every": ("tracking", "checkpoint_every"),
    "keep_checkpoints": ("tracking", "keep_checkpoints"),
    "log_party_metrics": ("tracking", "log_party_metrics"),
}


def _field_types(cls: type) -> dict[str, Any]:
    return {f.name: f.type for f in dataclasses.fields(cls)}


def _coerce(value: Any, type_name: str, where: str) -> Any:
    """Check a YAML value against the dataclass field's annotation."""
    if value is None:
        if "None" in type_name:
            return None
        raise ConfigError(f"{where}: must not be empty")
    base = type_name.replace(" | None", "")
    if base == "str | dict[str, Any]":  # a model: a name or import path, or Lightning CLI's class_path/init_args
        if isinstance(value, str):
            return value
        if isinstance(value, dict) and isinstance(value.get("class_path"), str) and set(value) <= {"class_path", "init_args"}:
            if not isinstance(value.get("init_args", {}), dict):
                raise ConfigError(f"{where}.init_args: expected a mapping, got {value['init_args']!r}")
            return {"class_path": value["class_path"], "init_args": dict(value.get("init_args") or {})}
        raise ConfigError(f"{where}: expected a model name, an import path or {{class_path: ..., init_args: {{...}}}}, got {value!r}")
    if base == "list[str]":  # a list in YAML, or one comma-separated string
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
            return [str(v) for v in value]
        raise ConfigError(f"{where}: expected a list of column names, got {value!r}")
    if base == "bool":
        if isinstance(value, bool):
            return value
    elif base == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif base == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif base == "str":
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    else:  # pragma: no cover - a new field type needs a branch here
        raise TypeError(f"unsupported config type {type_name}")
    raise ConfigError(f"{where}: expected {base}, got {value!r}")


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"malformed YAML in {path}{at}: {getattr(exc, 'problem', exc)}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections {sorted(SECTIONS)}")
    return loaded


def build_config(
    yaml_values: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None
) -> RunConfig:
    """Merge YAML sections and CLI overrides into a validated :class:`RunConfig`."""
    sections: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for section, values in (yaml_values or {}).items():
        if section not in SECTIONS:
            raise ConfigError(f"unknown config section {section!r}; expected one of {sorted(SECTIONS)}")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"config section {section!r} must be a mapping")
        types = _field_types(SECTIONS[section])
        for key, value in values.items():
            if key not in types:
                raise ConfigError(
                    f"unknown option {section}.{key}; known: {', '.join(sorted(types))}"
                )
            sections[section][key] = _coerce(value, str(types[key]), f"{section}.{key}")
    types_by_section = {name: _field_types(cls) for name, cls in SECTIONS.items()}
    for flag, value in (overrides or {}).items():
        if value is None:
            continue
        section, key = CLI_FIELDS[flag]
        field_type = str(types_by_section[section][key])
        if isinstance(value, str) and ("list[str]" in field_type or "dict" in field_type):
            value = _coerce(value, field_type, "--" + flag.replace("_", "-"))
        sections[section][key] = value
    for name, value in DATASET_DEFAULTS.get(sections["data"].get("dataset", DataConfig.dataset), {}).items():
        section, _, key = name.partition(".")
        sections[section].setdefault(key, value)
    config = RunConfig(**{name: SECTIONS[name](**values) for name, values in sections.items()})
    if not config.tracking.registered_model:
        config.tracking.registered_model = None  # "" on the command line: do not register
    dp = config.privacy
    if dp.mode == "off" and (dp.noise is not None or dp.epsilon is not None):
        dp.mode = "sample"
    if config.data.partition is None:
        config.data.partition = default_partition(config.data.dataset)
    validate(config)
    return config


def party_comparing_rule_refusal(rule: str) -> str:
    """Why client-level DP refuses an alpha rule that compares parties (see fedlight.privacy)."""
    return (f"--alpha-rule {rule} scores each party against the round's others, so one party moves "
            "the others' weights and client-level DP's noise no longer covers it; use quality, label_fit or uniform")


def default_partition(dataset: str) -> str:
    """Natural (one client per party) where the data has parties of its own, else dirichlet."""
    return "natural" if dataset in PARTY_DATASETS else "dirichlet"


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def validate(config: RunConfig) -> None:
    """Range checks that need no registry (names are checked where they resolve)."""
    d, t = config.data, config.training
    _require(d.partition is None or d.partition in PARTITIONS, f"unknown partition {d.partition!r}; choose from {', '.join(PARTITIONS)}")
    _require(d.num_clients is None or d.num_clients > 0, f"--num-clients must be positive, got {d.num_clients}")
    _require(d.dirichlet_beta > 0 and math.isfinite(d.dirichlet_beta), f"--dirichlet-beta must be positive, got {d.dirichlet_beta}")
    _require(d.shards_per_client > 0, f"--shards-per-client must be positive, got {d.shards_per_client}")
    _require(0 < d.volume <= 1, f"--volume must be in (0, 1], got {d.volume}")
    _require(0 <= d.val_fraction < 1, f"--val-fraction must be in [0, 1), got {d.val_fraction}")
    _require(0 <= d.noisy_client_fraction <= 1, f"--noisy-client-fraction must be in [0, 1], got {d.noisy_client_fraction}")
    _require(0 <= d.label_noise <= 1, f"--label-noise must be in [0, 1], got {d.label_noise}")
    _require(d.label_noise_mode in LABEL_NOISE_MODES, f"unknown --label-noise-mode {d.label_noise_mode!r}; choose from {', '.join(LABEL_NOISE_MODES)}")
    _require(d.image_noise_std >= 0, f"--image-noise-std must be non-negative, got {d.image_noise_std}")
    _require(d.scaling in SCALING_MODES, f"unknown --scaling {d.scaling!r}; choose from {', '.join(SCALING_MODES)}")
    _require(0 <= d.test_fraction < 1, f"--test-fraction must be in [0, 1), got {d.test_fraction}")
    _require(d.heart_disease_mode in HEART_DISEASE_MODES,
             f"unknown --heart-disease-mode {d.heart_disease_mode!r}; choose from {', '.join(HEART_DISEASE_MODES)}")
    if d.dataset == "table":
        _require(bool(d.data_dir), "dataset table needs --data-dir (a .csv or .parquet file)")
        _require(bool(d.party_column) and bool(d.label_column), "dataset table needs --party-column and --label-column")
    if d.dataset == "python":
        _require(bool(d.data_factory), "dataset python needs --data-factory module:function")
    _require(t.rounds > 0, f"--rounds must be positive, got {t.rounds}")
    _require(t.clients_per_round > 0, f"--clients-per-round must be positive, got {t.clients_per_round}")
    _require(t.local_epochs > 0, f"--local-epochs must be positive, got {t.local_epochs}")
    _require(t.local_steps is None or t.local_steps > 0, f"--local-steps must be positive, got {t.local_steps}")
    _require(t.batch_size > 0, f"--batch-size must be positive, got {t.batch_size}")
    _require(t.lr > 0 and math.isfinite(t.lr), f"--lr must be positive, got {t.lr}")
    _require(0 <= t.momentum < 1, f"--momentum must be in [0, 1), got {t.momentum}")
    _require(t.eval_every > 0, f"--eval-every must be positive, got {t.eval_every}")
    _require(bool(config.tracking.experiment), "--experiment must not be empty")
    _require(config.tracking.run_name is None or bool(config.tracking.run_name.strip()),
             "--run-name must not be empty (leave it out to name the run after its strategy, data and seed)")
    _require(config.tracking.checkpoint_every >= 0,
             f"--checkpoint-every must be non-negative (0: no checkpoints), got {config.tracking.checkpoint_every}")
    dp = config.privacy
    _require(dp.mode in DP_MODES, f"unknown --dp-mode {dp.mode!r}; choose from {', '.join(DP_MODES)}")
    _require(dp.accountant in DP_ACCOUNTANTS, f"unknown --dp-accountant {dp.accountant!r}; choose from {', '.join(DP_ACCOUNTANTS)}")
    _require(dp.grad_sample_mode in DP_GRAD_SAMPLE_MODES,
             f"unknown --dp-grad-sample-mode {dp.grad_sample_mode!r}; choose from {', '.join(DP_GRAD_SAMPLE_MODES)}")
    _require(dp.noise is None or (dp.noise > 0 and math.isfinite(dp.noise)),
             f"--dp-noise must be positive, got {dp.noise} (0 adds no noise: epsilon is infinite; use --dp-mode off for a run without DP)")
    _require(dp.clip > 0 and math.isfinite(dp.clip), f"--dp-clip must be positive, got {dp.clip}")
    _require(0 < dp.delta < 1, f"--dp-delta must be in (0, 1), got {dp.delta}")
    _require(dp.epsilon is None or (dp.epsilon > 0 and math.isfinite(dp.epsilon)), f"--dp-epsilon must be positive, got {dp.epsilon}")
    _require(not (dp.noise is not None and dp.epsilon is not None), "give either --dp-noise or --dp-epsilon, not both")
    _require(dp.mode == "off" or dp.noise is not None or dp.epsilon is not None, f"--dp-mode {dp.mode} needs --dp-noise or --dp-epsilon")
    st = config.strategy
    _require(st.prox_mu >= 0, f"--prox-mu must be non-negative, got {st.prox_mu}")
    _require(st.server_lr is None or st.server_lr > 0, f"--server-lr must be positive, got {st.server_lr}")
    _require(0 <= st.server_beta1 < 1 and 0 <= st.server_beta2 < 1, "--server-beta1 and --server-beta2 must be in [0, 1)")
    _require(st.server_tau > 0, f"--server-tau must be positive, got {st.server_tau}")
    _require(st.moon_mu >= 0, f"--moon-mu must be non-negative, got {st.moon_mu}")
    _require(st.moon_tau > 0, f"--moon-tau must be positive, got {st.moon_tau}")
    _require(0 < st.alpha_momentum <= 1, f"--alpha-momentum must be in (0, 1], got {st.alpha_momentum}")
    _require(0 <= st.alpha_min <= st.alpha_max, f"need 0 <= --alpha-min <= --alpha-max, got {st.alpha_min}, {st.alpha_max}")
    _require(st.alpha_max > 0, f"--alpha-max must be positive, got {st.alpha_max}")
    _require(st.alpha_temperature > 0, f"--alpha-temperature must be positive, got {st.alpha_temperature}")
    _require(st.alpha_tolerance >= 0, f"--alpha-tolerance must be non-negative, got {st.alpha_tolerance}")
    _require(st.byzantine_f >= 0, f"--byzantine-f must be non-negative, got {st.byzantine_f}")
    _require(st.pre_aggregation in PRE_AGGREGATIONS,
             f"unknown --pre-aggregation {st.pre_aggregation!r}; choose from {', '.join(PRE_AGGREGATIONS)}")
    _require(st.bucket_size > 0, f"--bucket-size must be positive, got {st.bucket_size}")
    _require(st.clip_tau is None or (st.clip_tau > 0 and math.isfinite(st.clip_tau)), f"--clip-tau must be positive, got {st.clip_tau}")
    _require(st.clip_iterations > 0, f"--clip-iterations must be positive, got {st.clip_iterations}")
    _require(st.clip_tau_growth >= 1 and math.isfinite(st.clip_tau_growth),
             f"--clip-tau-growth must be at least 1, got {st.clip_tau_growth}")
    # a round that falls short (failures, stragglers) lowers f instead (fedlight.strategies.bulyan)
    _require(st.name != "bulyan" or t.clients_per_round >= 4 * st.byzantine_f + 3,
             f"bulyan needs --clients-per-round >= 4 * --byzantine-f + 3 = {4 * st.byzantine_f + 3}, "
             f"got {t.clients_per_round}; lower --byzantine-f or sample more parties")
    validate_faults(config.faults)
    validate_execution(config.execution, clients_per_round=config.training.clients_per_round)


EXECUTOR_NAMES = ("sequential", "ray")  # fedlight.execution.EXECUTOR_NAMES
ACCELERATOR_NAMES = ("auto", "cpu", "gpu")  # fedlight.loop.ACCELERATORS


def validate_execution(ex: ExecutionConfig, *, clients_per_round: int) -> None:
    """Names and ranges of where client tasks run."""
    _require(ex.executor in EXECUTOR_NAMES, f"--executor {ex.executor!r}: choose from {', '.join(EXECUTOR_NAMES)}")
    _require(ex.accelerator in ACCELERATOR_NAMES,
             f"--accelerator {ex.accelerator!r}: choose from {', '.join(ACCELERATOR_NAMES)}")
    _require(ex.workers is None or ex.workers >= 1, f"--workers must be at least 1, got {ex.workers}")
    _require(ex.worker_cpus > 0, f"--worker-cpus must be positive, got {ex.worker_cpus}")
    _require(ex.worker_gpus >= 0, f"--worker-gpus must be >= 0, got {ex.worker_gpus}")
    _require(ex.min_clients >= 0, f"--min-clients must be >= 0, got {ex.min_clients}")
    _require(ex.min_clients <= clients_per_round,
             f"--min-clients {ex.min_clients} exceeds --clients-per-round {clients_per_round}: no round would be aggregated")
    if ex.executor == "sequential":
        for flag, value, default in (("--workers", ex.workers, None), ("--ray-address", ex.ray_address, None),
                                     ("--worker-gpus", ex.worker_gpus, 0.0)):
            _require(value == default, f"{flag} needs --executor ray")


def validate_faults(fa: FaultsConfig) -> None:
    """Range checks of the injected faults and attacks."""
    _require(fa.attack in ATTACK_NAMES, f"unknown --attack {fa.attack!r}; choose from {', '.join(ATTACK_NAMES)}")
    _require(0 <= fa.byzantine_fraction < 1, f"--byzantine-fraction must be in [0, 1), got {fa.byzantine_fraction}")
    _require(fa.attack == "none" or fa.byzantine_fraction > 0, f"--attack {fa.attack} needs a --byzantine-fraction above 0")
    _require(fa.attack != "none" or fa.byzantine_fraction == 0, "--byzantine-fraction needs an --attack")
    _require(fa.alie_z is None or math.isfinite(fa.alie_z), f"--alie-z must be finite, got {fa.alie_z}")
    _require(fa.ipm_epsilon > 0 and math.isfinite(fa.ipm_epsilon), f"--ipm-epsilon must be positive, got {fa.ipm_epsilon}")
    _require(fa.gaussian_std > 0 and math.isfinite(fa.gaussian_std), f"--gaussian-std must be positive, got {fa.gaussian_std}")
    _require(math.isfinite(fa.attack_scale), f"--attack-scale must be finite, got {fa.attack_scale}")
    for flag, rate in (("client-failure-rate", fa.client_failure_rate), ("client-nan-rate", fa.client_nan_rate),
                       ("straggler-rate", fa.straggler_rate)):
        _require(0 <= rate <= 1, f"--{flag} must be in [0, 1], got {rate}")
    _require(fa.straggler_delay > 0 and math.isfinite(fa.straggler_delay), f"--straggler-delay must be positive, got {fa.straggler_delay}")
    _require(fa.round_deadline is None or fa.round_deadline > 0, f"--round-deadline must be positive, got {fa.round_deadline}")
    _require(fa.straggler_rate == 0 or fa.round_deadline is not None, "--straggler-rate needs --round-deadline (simulated seconds)")


def precheck(config: RunConfig) -> None:
    """The CLI's checks of a validated config that need no data, torch or MLflow.

    They run before :func:`fedlight.experiment.run_experiment` is imported, so a
    misspelt name is refused in well under a second. ``run_experiment`` makes the
    same checks later against the registries themselves, where a strategy
    registered in Python (:func:`fedlight.register_strategy`) or a model class is
    also accepted; a run from the command line can only name built-ins, so this
    refuses the rest with the registries' own messages. A model spec with ':' or
    '.' is an import path, resolved (and checked) when the model is built.
    """
    d, t = config.data, config.training
    # a partition makes at most --num-clients clients (the data may make fewer: checked once it is loaded)
    _require(d.num_clients is None or t.clients_per_round <= d.num_clients,
             f"--clients-per-round {t.clients_per_round} exceeds the {d.num_clients} clients of --num-clients")
    st = config.strategy
    _require(st.name in STRATEGY_NAMES, f"unknown strategy {st.name!r}; choose from {', '.join(STRATEGY_NAMES)}")
    if st.name in ALPHA_RULE_STRATEGIES:
        _require(st.alpha_rule in ALPHA_RULE_NAMES,
                 f"strategy {st.name}: unknown alpha rule {st.alpha_rule!r}; choose from {', '.join(ALPHA_RULE_NAMES)}")
        _require(not (config.privacy.mode == "client" and st.alpha_rule in PARTY_COMPARING_ALPHA_RULES),
                 party_comparing_rule_refusal(st.alpha_rule))
    dataset = config.data.dataset
    _require(dataset in DATASET_NAMES, f"unknown dataset {dataset!r}; choose from {', '.join(DATASET_NAMES)}")
    model = config.training.model
    if isinstance(model, str):
        _require(bool(model.strip()), "model: empty name; give a built-in name or an import path module:Class")
    class_path = (model.get("class_path") if isinstance(model, dict) else model)
    if isinstance(class_path, str) and class_path.strip():
        class_path = class_path.strip()
        _require(class_path in MODEL_NAMES or ":" in class_path or "." in class_path,
                 f"unknown model {class_path!r}; choose from {', '.join(MODEL_NAMES)} or give an import path module:Class")
