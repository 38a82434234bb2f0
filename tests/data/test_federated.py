import numpy as np
import pytest
import torch

from fedlight.data import build_federated_data, load_source
from fedlight.data.sources import SourceData
from fedlight.errors import ConfigError


def _source(n_writers=6, per_writer=10, num_classes=4):
    n = n_writers * per_writer
    rng = np.random.default_rng(0)
    return SourceData(
        name="fake", train_x=rng.random((n, 1, 4, 4), dtype=np.float32), train_y=np.arange(n) % num_classes,
        test_x=rng.random((n_writers, 1, 4, 4), dtype=np.float32), test_y=np.arange(n_writers) % num_classes,
        class_names=tuple("abcd"[:num_classes]), train_writer=np.repeat(np.arange(n_writers), per_writer),
        test_writer=np.arange(n_writers), writer_ids=tuple(f"w{i}" for i in range(n_writers)),
    )


def test_deterministic_for_a_seed():
    a = build_federated_data(_source(), partition="natural", seed=3)
    b = build_federated_data(_source(), partition="natural", seed=3)
    for ca, cb in zip(a.clients, b.clients):
        assert torch.equal(ca.train_y, cb.train_y) and torch.equal(ca.val_x, cb.val_x)


def test_natural_subset_evaluates_on_its_writers():
    data = build_federated_data(_source(), partition="natural", num_clients=2, seed=0)
    assert len(data.clients) == 2 and len(data.test_y) == 2
    assert all(c.name.startswith("w") for c in data.clients)


def test_volume_and_validation_split():
    data = build_federated_data(_source(), partition="natural", volume=0.5, val_fraction=0.2, seed=0)
    assert all(c.num_train == 4 and len(c.val_y) == 1 for c in data.clients)


def test_noisy_clients_are_recorded_and_corrupted():
    clean = build_federated_data(_source(), partition="natural", seed=0)
    noisy = build_federated_data(_source(), partition="natural", noisy_client_fraction=0.5, label_noise=1.0,
                                 label_noise_mode="shift", seed=0)
    assert len(noisy.corrupted_clients) == 3
    for cid, (c, n) in enumerate(zip(clean.clients, noisy.clients)):
        if cid in noisy.corrupted_clients:
            assert n.corrupted and torch.equal(n.train_y, (c.train_y + 1) % 4)
        else:
            assert not n.corrupted and torch.equal(n.train_y, c.train_y)
    assert torch.equal(clean.test_y, noisy.test_y)  # the server's test data stays clean


def test_digits_partitions():
    src = load_source("digits")
    for partition in ("iid", "dirichlet", "shards"):
        data = build_federated_data(src, partition=partition, num_clients=5, seed=0)
        assert len(data.clients) == 5 and data.num_classes == 10
    with pytest.raises(ConfigError, match="needs a dataset with writers"):
        build_federated_data(src, partition="natural")
