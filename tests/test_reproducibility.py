"""Fixed-seed runs give the same final parameters as before the speed work.

Each run's parameters are summarised by four random projections of all of
them (in key order), recorded with the code before the loader, Trainer,
logging and DP-noise changes, with torch on one thread. Bits are not
compared: float kernels differ between CPUs (AVX2, AVX-512) and thread
counts in the last digits, while a change of behaviour (another batch
order, another noise draw, a missed callback) moves the projections by far
more than the tolerance. A change that moves a result on purpose updates
them and says why in its commit.
"""

import pytest
import torch

from fedlight.loop import FederatedLoop
from fedlight.models import build_model
from fedlight.privacy import ClientLevelDP, SampleLevelDP
from fedlight.state import ClientStateStore
from fedlight.strategies import build_strategy
from tests.conftest import make_tiny_federated

RECORDED = {
    ("fedavg", "off", "small_cnn"): [-4.981666, -6.261233, -10.245756, 2.469120],
    ("scaffold", "off", "small_cnn"): [-4.933100, -6.261706, -10.289451, 2.407940],
    ("adaptive", "off", "small_cnn"): [-4.956094, -6.260613, -10.272623, 2.478225],
    ("moon", "off", "leaf_cnn"): [-19.175843, -35.608576, 25.373376, -9.231937],
    ("fedavg", "sample", "small_cnn"): [-15.468011, -4.928197, 1.609037, 0.185487],
    ("fedavg", "client", "small_cnn"): [-6.001835, 51.951246, -12.273213, 2.304674],
}
TOLERANCE = 1e-4  # relative, of each projection; float noise across CPUs is about 1e-6


def _fingerprint(params) -> list[float]:
    flat = torch.cat([params[key].detach().double().flatten() for key in sorted(params)])
    directions = torch.randn(4, flat.numel(), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return [float(v) for v in directions @ flat]


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("strategy, dp, model", sorted(RECORDED))
def test_fixed_seed_run_gives_the_recorded_parameters(strategy, dp, model, one_thread):
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
    assert _fingerprint(loop.global_params()) == pytest.approx(RECORDED[(strategy, dp, model)], rel=TOLERANCE)
