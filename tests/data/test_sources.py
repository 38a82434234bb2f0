import json

import numpy as np
import pytest

from fedlight.data.sources import load_digits, load_femnist, load_source
from fedlight.errors import ConfigError, DataError
from tests.conftest import FEMNIST_DIR, requires_femnist


def _write_npz(root, writers=(0, 0, 1, 2), test_writers=(0, 1, 2)):
    ids = np.array(["f0000_00", "f0001_01", "f0002_02"])
    for split, w in (("train", writers), ("test", test_writers)):
        n = len(w)
        x = np.zeros((n, 28, 28), dtype=np.uint8)
        x[:, 10, 10] = 255
        np.savez_compressed(root / f"{split}.npz", x=x, y=np.arange(n, dtype=np.int64) % 62,
                            writer=np.array(w, dtype=np.int32), writer_ids=ids)


def _write_leaf(root):
    """Two shards in LEAF's JSON layout; pixels 1.0 = white paper."""
    for split in ("train", "test"):
        (root / split).mkdir()
        for shard, users in enumerate((["u1", "u2"], ["u3"])):
            data = {u: {"x": [[1.0] * 783 + [0.0]] * (2 if split == "train" else 1),
                        "y": [shard, shard + 10][: (2 if split == "train" else 1)]} for u in users}
            (root / split / f"all_data_{shard}_{split}.json").write_text(
                json.dumps({"users": users, "num_samples": [len(d["y"]) for d in data.values()], "user_data": data}))


def test_digits_is_embedded_and_scaled():
    src = load_digits()
    assert src.input_shape == (1, 8, 8) and src.num_classes == 10
    assert src.train_x.min() >= 0 and src.train_x.max() <= 1
    assert len(src.train_y) + len(src.test_y) == 1797
    assert src.train_writer is None


def test_femnist_npz_layout(tmp_path):
    _write_npz(tmp_path)
    src = load_femnist(str(tmp_path))
    assert src.train_x.shape == (4, 1, 28, 28) and src.train_x.dtype == np.float32
    assert src.train_x[0, 0, 10, 10] == 1.0  # 255 = ink -> 1.0
    assert src.writer_ids == ("f0000_00", "f0001_01", "f0002_02")
    assert list(src.train_writer) == [0, 0, 1, 2]


def test_femnist_leaf_json_layout(tmp_path):
    _write_leaf(tmp_path)
    src = load_femnist(str(tmp_path))
    assert src.writer_ids == ("u1", "u2", "u3")
    assert src.train_x.shape == (6, 1, 28, 28)
    # white paper (1.0) becomes background 0, the one dark pixel becomes ink 1
    assert src.train_x[0, 0, 0, 0] == 0.0 and src.train_x[0, 0, 27, 27] == 1.0
    assert list(src.train_writer) == [0, 0, 1, 1, 2, 2]
    assert list(src.test_y) == [0, 0, 1]


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda root: None, "holds neither"),
        (lambda root: (root / "train.npz").write_bytes(b"not a zip"), "cannot read"),
        (lambda root: ((root / "train").mkdir(), (root / "test").mkdir(), (root / "train" / "a.json").write_text("{bad")), "not a LEAF JSON"),
    ],
)
def test_femnist_malformed_directories(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(DataError, match=message):
        load_femnist(str(tmp_path))


def test_femnist_missing_dir_and_unknown_dataset(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_femnist(str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="needs --data-dir"):
        load_femnist(None)
    with pytest.raises(ConfigError, match="unknown dataset"):
        load_source("cifar")


@requires_femnist
def test_real_femnist_subset():
    src = load_femnist(str(FEMNIST_DIR))
    assert src.num_classes == 62 and len(src.writer_ids) == 300
    assert len(src.train_y) == 41904 and len(src.test_y) == 4806
    assert set(np.unique(src.train_writer)) == set(range(300))


def test_crossdomain_merges_two_sources_on_the_digit_labels(tmp_path):
    from fedlight.data import build_federated_data
    from fedlight.data.sources import load_crossdomain

    _write_npz(tmp_path, writers=(0, 0, 1, 2), test_writers=(0, 1, 2))
    src = load_crossdomain(str(tmp_path), digits_parties=5)
    assert src.num_classes == 10 and src.input_shape == (1, 28, 28)
    assert src.domain_names == ("femnist", "digits") and len(src.writer_ids) == 3 + 5
    assert src.train_y.max() <= 9 and len(src.test_domain) == len(src.test_y)
    alone = build_federated_data(src, partition="natural", domain="digits")
    assert len(alone.clients) == 5 and all(c.name.startswith("digits:") for c in alone.clients)
    assert set(alone.test_domain.tolist()) == {0, 1}  # evaluated on both domains
    with pytest.raises(ConfigError, match="has domains"):
        build_federated_data(src, partition="natural", domain="mnist")
