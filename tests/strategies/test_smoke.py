"""Every registered strategy trains a 2-client, 2-round run and survives a checkpoint."""

import pytest
import torch

from fedlight.loop import FederatedLoop
from fedlight.models import build_model
from fedlight.strategies import STRATEGIES, build_strategy


def _loop(data, name, rounds=2, seed=0):
    torch.manual_seed(seed)
    model = build_model("small_cnn", data.input_shape, data.num_classes)
    return FederatedLoop(
        model=model, data=data, strategy=build_strategy(name), rounds=rounds, clients_per_round=2,
        local_epochs=1, batch_size=4, lr=0.1, eval_every=1, seed=seed,
    )


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_strategy_smoke(name, tiny_data):
    loop = _loop(tiny_data, name)
    before = loop.global_params()
    history = loop.run()
    assert [row["round"] for row in history] == [1, 2]
    assert all(row["clients_ok"] == 2 and row["clients_failed"] == 0 for row in history)
    assert all(0.0 <= row["test_accuracy"] <= 1.0 for row in history)
    after = loop.global_params()
    assert any(not torch.equal(before[k], after[k]) for k in before), "aggregation left the model unchanged"
    loop.store.close()


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_strategy_resume_matches_uninterrupted_run(name, tiny_data, tmp_path):
    straight = _loop(tiny_data, name, rounds=3)
    straight.run()

    first = _loop(tiny_data, name, rounds=3)
    first.rounds = 1
    first.run()
    first.save_checkpoint(tmp_path / "ckpt")
    first.store.close()

    resumed = _loop(tiny_data, name, rounds=3, seed=0)
    resumed.load_checkpoint(tmp_path / "ckpt")
    assert resumed.server_round == 1
    resumed.run()
    for key, value in straight.global_params().items():
        assert torch.allclose(value, resumed.global_params()[key], atol=1e-6), key
    assert [r["round"] for r in resumed.history] == [1, 2, 3]
