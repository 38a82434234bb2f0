from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedlight.data import ClientData, FederatedData
from tests.tracking_server import mlflow_server, served_run  # noqa: F401 - session fixtures: one server for all its tests

REPO = Path(__file__).resolve().parent.parent
FEMNIST_DIR = REPO.parent / "shared" / "data" / "femnist"

requires_femnist = pytest.mark.skipif(
    not (FEMNIST_DIR / "train.npz").is_file(),
    reason=f"real FEMNIST data not found at {FEMNIST_DIR}",
)


def make_tiny_federated(num_clients: int = 2, per_client: int = 12, num_classes: int = 3, seed: int = 0) -> FederatedData:
    """A few 8x8 clients whose class is the brightest image quadrant."""
    gen = torch.Generator().manual_seed(seed)

    def sample(n):
        y = torch.randint(0, num_classes, (n,), generator=gen)
        x = torch.rand(n, 1, 8, 8, generator=gen) * 0.2
        for i, label in enumerate(y.tolist()):
            r, c = divmod(label, 2)
            x[i, 0, r * 4 : r * 4 + 4, c * 4 : c * 4 + 4] += 0.8
        return x, y

    return federated_from_sampler(sample, num_clients=num_clients, per_client=per_client, test_size=30,
                                  num_classes=num_classes, input_shape=(1, 8, 8), dataset="tiny")


def federated_from_sampler(sample, *, num_clients: int, per_client: int, test_size: int, num_classes: int,
                           input_shape: tuple[int, ...], dataset: str) -> FederatedData:
    """Clients of ``per_client`` training and 4 validation rows each, then a test set, drawn by ``sample(n)`` in that order."""
    clients = []
    for cid in range(num_clients):
        tx, ty = sample(per_client)
        vx, vy = sample(4)
        clients.append(ClientData(cid, f"c{cid}", tx, ty, vx, vy))
    test_x, test_y = sample(test_size)
    return FederatedData(clients=clients, test_x=test_x, test_y=test_y,
                         class_names=tuple(str(i) for i in range(num_classes)), input_shape=input_shape, dataset=dataset)


@pytest.fixture
def tiny_data() -> FederatedData:
    return make_tiny_federated()


@pytest.fixture
def tracking_uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/mlflow.db"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
