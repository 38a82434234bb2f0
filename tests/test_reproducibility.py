"""Fixed-seed runs give the same final parameters, bit for bit, as before the speed work.

The hashes were recorded with the code before the loader, Trainer and
logging changes (the first 16 hex digits of a SHA-256 over the parameters in
key order); a change that moves a result on purpose updates them and says
why in its commit.
"""

import hashlib

import pytest
import torch

from fedlight.loop import FederatedLoop
from fedlight.models import build_model
from fedlight.privacy import ClientLevelDP, SampleLevelDP
from fedlight.state import ClientStateStore
from fedlight.strategies import build_strategy
from tests.conftest import make_tiny_federated

RECORDED = {
    ("fedavg", "off", "small_cnn"): "cf2b3c7050f55fbe",
    ("scaffold", "off", "small_cnn"): "a25182b937e40212",
    ("adaptive", "off", "small_cnn"): "a29de69392de1c14",
    ("moon", "off", "leaf_cnn"): "3c068ed58eae4652",
    ("fedavg", "sample", "small_cnn"): "fbd2d593576e4c2c",
    ("fedavg", "client", "small_cnn"): "fc6ebda1945950c6",
}


def _fingerprint(params) -> str:
    digest = hashlib.sha256()
    for key in sorted(params):
        digest.update(key.encode())
        digest.update(params[key].detach().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


@pytest.mark.parametrize("strategy, dp, model", sorted(RECORDED))
def test_fixed_seed_run_gives_the_recorded_parameters(strategy, dp, model):
    data = make_tiny_federated(num_clients=3, per_client=12)
    store = ClientStateStore()
    privacy = None
    built = build_strategy(strategy)
    if dp == "sample":
        privacy = SampleLevelDP(store=store, clip=1.0, delta=1e-5, noise=0.7)
        privacy.calibrate(batches_per_epoch=[3] * 3, local_epochs=1, rounds=2)
    if dp == "client":
        built.averager = ClientLevelDP(clip=1.0, delta=1e-5, clients_per_round=2, num_clients=3, mean_client_size=12.0,
                                       rounds=2, noise=0.5)
    torch.manual_seed(0)
    loop = FederatedLoop(model=build_model(model, data.input_shape, data.num_classes), data=data, strategy=built,
                         rounds=2, clients_per_round=2, local_epochs=1, batch_size=4, lr=0.1,
                         momentum=0.5 if strategy == "fedavg" else 0.0, store=store, privacy=privacy)
    loop.run()
    store.close()
    assert _fingerprint(loop.global_params()) == RECORDED[(strategy, dp, model)]
