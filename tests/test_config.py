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
