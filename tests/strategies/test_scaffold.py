import torch

from fedlight.callbacks import ScaffoldCorrection
from fedlight.state import ClientStateStore
from fedlight.strategies.scaffold import Scaffold, scaffold_server_update
from tests.strategies.helpers import fake_module, fake_trainer, result


def test_client_correction_and_option_two_update():
    module = fake_module(1.0, lr=0.1)  # x = 1.0
    callback = ScaffoldCorrection(server_control={"w": torch.tensor([0.2])}, client_control={"w": torch.tensor([0.1])})
    callback.on_fit_start(fake_trainer(), module)
    module.model.w.grad = torch.tensor([1.0])
    callback.edit_gradients(module)
    assert torch.allclose(module.model.w.grad, torch.tensor([1.1]))  # g + c - c_i = 1 + 0.2 - 0.1
    with torch.no_grad():
        module.model.w.fill_(0.5)  # y_i = 0.5 after K = 5 steps
    callback.on_train_end(fake_trainer(global_step=5), module)
    # c_i+ = c_i - c + (x - y_i) / (K * lr) = 0.1 - 0.2 + 0.5 / 0.5 = 0.9 ; delta = 0.8
    # the new control variate is a state update for the driver to store, not a write to the store
    assert torch.allclose(module.report["state_updates"]["scaffold_control"]["w"], torch.tensor([0.9]))
    assert torch.allclose(module.report["control_delta"]["w"], torch.tensor([0.8]))


def test_server_update_sign_and_one_over_n():
    params, control = scaffold_server_update(
        {"w": torch.tensor([1.0])},
        {"w": torch.tensor([0.6])},
        {"w": torch.tensor([0.5])},
        [{"w": torch.tensor([0.4])}, {"w": torch.tensor([-0.2])}],
        num_clients=4,  # N counts all clients, not the 2 sampled
        server_lr=0.5,
    )
    assert torch.allclose(params["w"], torch.tensor([0.8]))  # 1 + 0.5 * (0.6 - 1)
    assert torch.allclose(control["w"], torch.tensor([0.55]))  # 0.5 + (0.4 - 0.2) / 4


def test_strategy_aggregate_and_state_round_trip():
    strategy = Scaffold(server_lr=1.0)
    store = ClientStateStore()
    strategy.setup(global_params={"w": torch.tensor([1.0])}, store=store, num_clients=2)
    results = [
        result(0, {"w": torch.tensor([0.0])}, n=1, extras={"control_delta": {"w": torch.tensor([1.0])}}),
        result(1, {"w": torch.tensor([3.0])}, n=3, extras={"control_delta": {"w": torch.tensor([3.0])}}),
    ]
    new = strategy.aggregate(1, {"w": torch.tensor([1.0])}, results, [])
    assert torch.allclose(new["w"], torch.tensor([2.25]))  # (0 * 1 + 3 * 3) / 4
    assert torch.allclose(strategy.server_control["w"], torch.tensor([2.0]))  # (1 + 3) / 2
    restored = Scaffold()
    restored.load_state_dict(strategy.state_dict())
    assert torch.equal(restored.server_control["w"], strategy.server_control["w"])
    store.close()
