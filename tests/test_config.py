import pytest

from fedlight.config import build_config, load_yaml
from fedlight.errors import ConfigError


def test_yaml_then_flags_override(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  dataset: femnist\ntraining:\n  rounds: 7\n  lr: 1\n")
    config = build_config(load_yaml(path), {"rounds": 3, "lr": None})
    assert config.data.dataset == "femnist"
    assert config.training.rounds == 3 and config.training.lr == 1.0


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"rounds": 0}, "--rounds must be positive"),
        ({"lr": -0.1}, "--lr must be positive"),
        ({"batch_size": 0}, "--batch-size must be positive"),
        ({"volume": 1.5}, r"--volume must be in \(0, 1\]"),
        ({"volume": 0.0}, r"--volume must be in \(0, 1\]"),
        ({"partition": "bogus"}, "unknown partition"),
        ({"label_noise_mode": "flip"}, "unknown --label-noise-mode"),
    ],
)
def test_bad_values_name_the_option(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_config({}, overrides)


def test_unknown_yaml_keys_and_types(tmp_path):
    with pytest.raises(ConfigError, match="unknown option training.epochs"):
        build_config({"training": {"epochs": 3}})
    with pytest.raises(ConfigError, match="unknown config section"):
        build_config({"optim": {}})
    with pytest.raises(ConfigError, match="training.rounds: expected int"):
        build_config({"training": {"rounds": "ten"}})


def test_malformed_and_missing_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_yaml(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(tmp_path / "none.yaml")
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_yaml(scalar)


# --- the CLI's light copies of the registries' names, and its prechecks ------------------------


def test_light_name_lists_equal_the_registries():
    from fedlight import config
    from fedlight.data.sources import SOURCES
    from fedlight.models import MODELS
    from fedlight.strategies import BUILTIN_STRATEGIES, STRATEGIES, strategy_options
    from fedlight.strategies.trust import ALPHA_RULES

    # the same names in the same order (error messages list them)
    assert [n for n in STRATEGIES if n in BUILTIN_STRATEGIES] == list(config.STRATEGY_NAMES)
    assert set(BUILTIN_STRATEGIES) == set(config.STRATEGY_NAMES)
    assert tuple(n for n in config.STRATEGY_NAMES if "alpha_rule" in strategy_options(n)) == config.ALPHA_RULE_STRATEGIES
    assert tuple(ALPHA_RULES) == config.ALPHA_RULE_NAMES
    assert tuple(n for n, rule in ALPHA_RULES.items() if rule.compares_parties) == config.PARTY_COMPARING_ALPHA_RULES
    assert tuple(SOURCES) == config.DATASET_NAMES
    assert set(config.PARTY_DATASETS) <= set(config.DATASET_NAMES)
    assert tuple(MODELS) == config.MODEL_NAMES


def _precheck_error(**overrides) -> str:
    from fedlight.config import precheck

    with pytest.raises(ConfigError) as info:
        precheck(build_config({}, overrides))
    return str(info.value)


def _error(call) -> str:
    with pytest.raises(ConfigError) as info:
        call()
    return str(info.value)


def test_prechecks_say_what_the_registries_say():
    """The CLI refuses a name with the message run_experiment would give once it has imported torch."""
    from fedlight.data.sources import load_source
    from fedlight.experiment import configure_privacy
    from fedlight.models import build_model
    from fedlight.strategies import build_strategy

    assert _precheck_error(strategy="nope") == _error(lambda: build_strategy("nope", {}))
    assert _precheck_error(strategy="adaptive", alpha_rule="vibes") == _error(
        lambda: build_strategy("adaptive", {"alpha_rule": "vibes"}))
    assert _precheck_error(dataset="nope") == _error(lambda: load_source("nope"))
    assert _precheck_error(model="nope") == _error(lambda: build_model("nope", (1, 8, 8), 10))
    assert _precheck_error(model="  ") == _error(lambda: build_model("  ", (1, 8, 8), 10))
    for rule in ("loss", "similarity", "global_loss"):
        config = build_config({}, {"strategy": "adaptive", "alpha_rule": rule, "dp_mode": "client", "dp_noise": 1.0})
        strategy = build_strategy("adaptive", config.strategy.options())
        assert _precheck_error(strategy="adaptive", alpha_rule=rule, dp_mode="client", dp_noise=1.0) == _error(
            lambda c=config, s=strategy: configure_privacy(c, data=None, strategy=s, store=None))


def test_prechecks_pass_what_only_resolves_later():
    from fedlight.config import precheck

    for overrides in [
        {},
        {"model": "mypkg.nets:Net"},  # import paths are resolved when the model is built
        {"model": "mypkg.nets.Net"},
        {"model": " mlp "},
        {"strategy": "fedavg", "alpha_rule": "vibes"},  # fedavg takes no alpha rule, as build_strategy ignores it
        {"strategy": "adaptive", "alpha_rule": "quality", "dp_mode": "client", "dp_noise": 1.0},
        {"num_clients": 5, "clients_per_round": 5},
    ]:
        precheck(build_config({}, overrides))
    precheck(build_config({"training": {"model": {"class_path": "mlp", "init_args": {"hidden": [8]}}}}))
    assert "unknown model 'resnet'" in _error(
        lambda: precheck(build_config({"training": {"model": {"class_path": "resnet"}}})))


def test_a_registered_strategy_passes_build_config_but_not_the_cli_precheck():
    # build_config (and so run_experiment, which validates the same way) leaves names to the registry,
    # where fedlight.register_strategy adds to the built-ins; only the CLI, which cannot register, prechecks them.
    config = build_config({"strategy": {"name": "my_registered_strategy"}})
    assert config.strategy.name == "my_registered_strategy"
    assert _precheck_error(strategy="my_registered_strategy").startswith("unknown strategy 'my_registered_strategy'")


def test_clients_per_round_above_num_clients():
    assert _precheck_error(num_clients=4, clients_per_round=9) == (
        "--clients-per-round 9 exceeds the 4 clients of --num-clients")


def test_femnist_defaults_are_the_config_files():
    from fedlight.config import DATASET_DEFAULTS, TrainingConfig
    from tests.conftest import REPO

    shipped = load_yaml(REPO / "configs" / "femnist.yaml")
    bare = build_config({}, {"dataset": "femnist", "partition": "natural"})  # what `fedlight run --dataset femnist` gets
    for name in DATASET_DEFAULTS["femnist"]:
        section, _, key = name.partition(".")
        assert getattr(getattr(bare, section), key) == shipped[section][key], name
    # a flag or the file still decides; other datasets keep the dataclass defaults
    assert build_config({"data": {"dataset": "femnist"}, "training": {"lr": 0.3}}, {"clients_per_round": 4}).training.lr == 0.3
    assert build_config({}, {"dataset": "femnist", "clients_per_round": 4}).training.clients_per_round == 4
    assert build_config({}, {"dataset": "digits"}).training.lr == TrainingConfig.lr
