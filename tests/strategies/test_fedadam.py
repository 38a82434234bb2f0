import torch

from fedlight.strategies.fedadam import FedAdam, adam_server_step
from tests.strategies.helpers import result


def test_adam_step_hand_computed():
    params, m, v = adam_server_step(
        {"w": torch.tensor([1.0])}, {"w": torch.tensor([0.1])}, {"w": torch.tensor([0.0])}, {"w": torch.tensor([0.0])},
        lr=0.2, beta1=0.9, beta2=0.99, tau=0.01,
    )
    assert torch.allclose(m["w"], torch.tensor([0.01]))
    assert torch.allclose(v["w"], torch.tensor([1e-4]))
    # 1 + 0.2 * 0.01 / (sqrt(1e-4) + 0.01) = 1.1
    assert torch.allclose(params["w"], torch.tensor([1.1]))


def test_fedadam_uses_the_weighted_mean_as_pseudo_gradient():
    strategy = FedAdam(server_lr=0.2, server_beta1=0.0, server_beta2=0.0, server_tau=1e-9)
    new = strategy.aggregate(1, {"w": torch.tensor([1.0])}, [result(0, {"w": torch.tensor([0.0])}, n=1), result(1, {"w": torch.tensor([1.5])}, n=3)], [])
    # Delta = 0.125 (mean 1.125 - 1); with b1 = b2 = 0 the step is lr * sign(Delta)
    assert torch.allclose(new["w"], torch.tensor([1.2]), atol=1e-6)
    restored = FedAdam()
    restored.load_state_dict(strategy.state_dict())
    assert torch.equal(restored.m["w"], strategy.m["w"])
