import numpy as np
import pytest

from fedlight.data.partition import (
    apply_volume,
    dirichlet_partition,
    iid_partition,
    natural_partition,
    shards_partition,
    train_val_split,
)
from fedlight.errors import ConfigError


def _covers_once(parts, n):
    joined = np.concatenate(parts)
    return len(joined) == n and len(np.unique(joined)) == n


def test_natural_one_client_per_writer(rng):
    writers = np.array([2, 0, 2, 1, 0])
    parts = natural_partition(writers, None, rng)
    assert [p.tolist() for p in parts] == [[1, 4], [3], [0, 2]]


def test_natural_subset_and_errors(rng):
    writers = np.repeat(np.arange(5), 3)
    parts = natural_partition(writers, 2, rng)
    assert len(parts) == 2 and all(len(p) == 3 for p in parts)
    with pytest.raises(ConfigError, match="exceeds"):
        natural_partition(writers, 6, rng)
    with pytest.raises(ConfigError, match="needs a dataset with writers"):
        natural_partition(None, None, rng)


def test_iid_near_equal(rng):
    parts = iid_partition(10, 3, rng)
    assert sorted(len(p) for p in parts) == [3, 3, 4] and _covers_once(parts, 10)


def test_dirichlet_skew_and_determinism():
    labels = np.repeat(np.arange(4), 50)
    a = dirichlet_partition(labels, 5, 0.1, np.random.default_rng(1))
    b = dirichlet_partition(labels, 5, 0.1, np.random.default_rng(1))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert _covers_once(a, 200)
    # with beta = 0.1 most clients are dominated by one class
    dominant = [np.bincount(labels[p], minlength=4).max() / len(p) for p in a]
    assert np.median(dominant) > 0.6
    uniform = dirichlet_partition(labels, 5, 1000.0, np.random.default_rng(1))
    assert max(np.bincount(labels[p], minlength=4).max() / len(p) for p in uniform) < 0.4


def test_shards_k_classes_per_client(rng):
    labels = np.repeat(np.arange(10), 20)
    parts = shards_partition(labels, 10, 2, rng)
    assert all(len(np.unique(labels[p])) == 2 for p in parts)
    assert _covers_once(parts, 200)
    with pytest.raises(ConfigError):
        shards_partition(labels, 10, 11, rng)


def test_volume_keeps_share_and_at_least_one(rng):
    parts = [np.arange(10), np.arange(10, 12)]
    kept = apply_volume(parts, 0.5, rng)
    assert [len(p) for p in kept] == [5, 1]
    assert set(kept[0]) <= set(parts[0])
    assert apply_volume(parts, 1.0, rng) is parts


def test_train_val_split(rng):
    train, val = train_val_split(np.arange(20), 0.1, rng)
    assert len(train) == 18 and len(val) == 2 and not set(train) & set(val)
    train, val = train_val_split(np.arange(2), 0.1, rng)
    assert len(train) == 1 and len(val) == 1
    train, val = train_val_split(np.arange(1), 0.1, rng)
    assert len(train) == 1 and len(val) == 0
