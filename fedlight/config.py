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
LABEL_NOISE_MODES = ("random", "shift")


@dataclass
class DataConfig:
    dataset: str = "digits"
    data_dir: str | None = None
    partition: str = "dirichlet"
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


@dataclass
class TrainingConfig:
    model: str = "small_cnn"
    rounds: int = 30
    clients_per_round: int = 5
    local_epochs: int = 1
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
    experiment: str = "fedlight"
    tracking_uri: str | None = None
    run_name: str | None = None
    registered_model: str | None = "fedlight-global"


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

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
    "model": ("training", "model"),
    "rounds": ("training", "rounds"),
    "clients_per_round": ("training", "clients_per_round"),
    "local_epochs": ("training", "local_epochs"),
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
    for flag, value in (overrides or {}).items():
        if value is None:
            continue
        section, key = CLI_FIELDS[flag]
        sections[section][key] = value
    config = RunConfig(**{name: SECTIONS[name](**values) for name, values in sections.items()})
    if not config.tracking.registered_model:
        config.tracking.registered_model = None  # "" on the command line: do not register
    dp = config.privacy
    if dp.mode == "off" and (dp.noise is not None or dp.epsilon is not None):
        dp.mode = "sample"
    validate(config)
    return config


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def validate(config: RunConfig) -> None:
    """Range checks that need no registry (names are checked where they resolve)."""
    d, t = config.data, config.training
    _require(d.partition in PARTITIONS, f"unknown partition {d.partition!r}; choose from {', '.join(PARTITIONS)}")
    _require(d.num_clients is None or d.num_clients > 0, f"--num-clients must be positive, got {d.num_clients}")
    _require(d.dirichlet_beta > 0 and math.isfinite(d.dirichlet_beta), f"--dirichlet-beta must be positive, got {d.dirichlet_beta}")
    _require(d.shards_per_client > 0, f"--shards-per-client must be positive, got {d.shards_per_client}")
    _require(0 < d.volume <= 1, f"--volume must be in (0, 1], got {d.volume}")
    _require(0 <= d.val_fraction < 1, f"--val-fraction must be in [0, 1), got {d.val_fraction}")
    _require(0 <= d.noisy_client_fraction <= 1, f"--noisy-client-fraction must be in [0, 1], got {d.noisy_client_fraction}")
    _require(0 <= d.label_noise <= 1, f"--label-noise must be in [0, 1], got {d.label_noise}")
    _require(d.label_noise_mode in LABEL_NOISE_MODES, f"unknown --label-noise-mode {d.label_noise_mode!r}; choose from {', '.join(LABEL_NOISE_MODES)}")
    _require(d.image_noise_std >= 0, f"--image-noise-std must be non-negative, got {d.image_noise_std}")
    _require(t.rounds > 0, f"--rounds must be positive, got {t.rounds}")
    _require(t.clients_per_round > 0, f"--clients-per-round must be positive, got {t.clients_per_round}")
    _require(t.local_epochs > 0, f"--local-epochs must be positive, got {t.local_epochs}")
    _require(t.batch_size > 0, f"--batch-size must be positive, got {t.batch_size}")
    _require(t.lr > 0 and math.isfinite(t.lr), f"--lr must be positive, got {t.lr}")
    _require(0 <= t.momentum < 1, f"--momentum must be in [0, 1), got {t.momentum}")
    _require(t.eval_every > 0, f"--eval-every must be positive, got {t.eval_every}")
    _require(bool(config.tracking.experiment), "--experiment must not be empty")
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
