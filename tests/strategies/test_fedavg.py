import torch

from fedlight.strategies import ClientFailure, ClientResult
from fedlight.strategies.fedavg import FedAvg


def _result(cid, value, n):
    return ClientResult(client_id=cid, num_samples=n, params={"w": torch.tensor([value])}, num_steps=1, train_loss=0.0)


def test_fedavg_weights_by_samples_and_ignores_failures():
    strategy = FedAvg()
    out = strategy.aggregate(1, {"w": torch.tensor([9.0])}, [_result(0, 1.0, 1), _result(1, 4.0, 2)], [ClientFailure(2, "boom")])
    assert torch.allclose(out["w"], torch.tensor([3.0]))  # (1*1 + 2*4) / 3


def test_fedavg_keeps_global_when_every_client_failed():
    glob = {"w": torch.tensor([9.0])}
    assert FedAvg().aggregate(1, glob, [], [ClientFailure(0, "boom")]) is glob
