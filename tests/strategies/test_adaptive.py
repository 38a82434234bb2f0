import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from fedlight.callbacks import GlobalLossProbe
from fedlight.errors import ConfigError
from fedlight.loop import FederatedLoop
from fedlight.models import build_model
from fedlight.state import ClientStateStore
from fedlight.strategies import build_strategy
from fedlight.strategies.adaptive import AdaptiveTrust
from fedlight.strategies.trust import ALPHA_RULES
from tests.strategies.helpers import result


def _setup(strategy):
    store = ClientStateStore()
    strategy.setup(global_params={"w": torch.tensor([0.0])}, store=store, num_clients=3)
    return store


def test_global_loss_rule_downweights_high_loss_party_by_hand():
    strategy = AdaptiveTrust(alpha_rule="global_loss", alpha_momentum=0.5, alpha_temperature=1.0, alpha_tolerance=0.0)
    store = _setup(strategy)
    results = [
        result(0, {"w": torch.tensor([1.0])}, n=10, extras={"pre_train_loss": 1.0}),
        result(1, {"w": torch.tensor([1.0])}, n=10, extras={"pre_train_loss": 1.0}),
        result(2, {"w": torch.tensor([4.0])}, n=20, extras={"pre_train_loss": 3.0}),  # ratio 3 -> s = e^-2
    ]
    new = strategy.aggregate(1, {"w": torch.tensor([0.0])}, results, [])
    a2 = 0.5 + 0.5 * torch.exp(torch.tensor(-2.0)).item()
    assert store.get(2, "alpha") == pytest.approx(a2)
    assert store.get(0, "alpha") == pytest.approx(1.0)
    expected = (10 * 1.0 + 10 * 1.0 + a2 * 20 * 4.0) / (10 + 10 + a2 * 20)
    assert new["w"].item() == pytest.approx(expected, rel=1e-6)
    assert strategy.round_metrics()["alpha/2"] == pytest.approx(a2)
    store.close()


def test_quality_rule_downweights_surprising_labels_by_hand():
    strategy = AdaptiveTrust(alpha_rule="quality", alpha_momentum=1.0, alpha_temperature=0.5, alpha_tolerance=0.25)
    store = _setup(strategy)
    results = [
        # CE - H: -0.5 (under-confident, clean) and 0.2 (within the tolerance) score 1
        result(0, {"w": torch.tensor([1.0])}, n=10, extras={"pre_train_loss": 3.0, "pre_train_entropy": 3.5}),
        result(1, {"w": torch.tensor([2.0])}, n=10, extras={"pre_train_loss": 1.2, "pre_train_entropy": 1.0}),
        # CE - H = 1.25: excess 1 over the tolerance -> s = e^(-1 / 0.5)
        result(2, {"w": torch.tensor([5.0])}, n=10, extras={"pre_train_loss": 2.0, "pre_train_entropy": 0.75}),
    ]
    new = strategy.aggregate(1, {"w": torch.tensor([0.0])}, results, [])
    s2 = torch.exp(torch.tensor(-2.0)).item()
    assert [store.get(c, "alpha") for c in (0, 1, 2)] == pytest.approx([1.0, 1.0, s2])
    assert new["w"].item() == pytest.approx((1.0 + 2.0 + s2 * 5.0) / (2 + s2), rel=1e-6)
    store.close()


def test_quality_rule_asks_clients_for_the_probe():
    strategy = AdaptiveTrust(alpha_rule="quality")
    assert isinstance(strategy.configure_round(1, [0], {})[0].callbacks[0], GlobalLossProbe)
    assert AdaptiveTrust(alpha_rule="loss").configure_round(1, [0], {})[0].callbacks == []


@pytest.mark.parametrize(
    "options",
    [
        {"alpha_rule": "uniform"},
        # every party tolerated: scores are exactly 1, so only the global-loss probe could tell the runs apart
        {"alpha_rule": "quality", "alpha_tolerance": 1e9},
    ],
    ids=["uniform", "quality-probe"],
)
def test_trusting_every_party_reproduces_fedavg_exactly(options, tiny_data):
    params = {}
    for name, strategy_options in (("fedavg", {}), ("adaptive", options)):
        torch.manual_seed(0)
        loop = FederatedLoop(
            model=build_model("small_cnn", tiny_data.input_shape, tiny_data.num_classes), data=tiny_data,
            strategy=build_strategy(name, strategy_options), rounds=2, clients_per_round=2, local_epochs=1,
            batch_size=4, lr=0.1,
        )
        loop.run()
        params[name] = loop.global_params()
    for key in params["fedavg"]:
        assert torch.equal(params["fedavg"][key], params["adaptive"][key])


@pytest.mark.parametrize("rule", sorted(set(ALPHA_RULES) - {"uniform"}))
def test_every_rule_trains_and_records_alpha(rule, tiny_data):
    loop = FederatedLoop(
        model=build_model("small_cnn", tiny_data.input_shape, tiny_data.num_classes), data=tiny_data,
        strategy=build_strategy("adaptive", {"alpha_rule": rule}), rounds=2, clients_per_round=2, local_epochs=1,
        batch_size=4, lr=0.1,
    )
    history = loop.run()
    assert all(0.0 <= history[-1][f"alpha/{c}"] <= 1.0 for c in (0, 1))
    assert loop.store.get(0, "alpha") == history[-1]["alpha/0"]


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="unknown alpha rule"):
        build_strategy("adaptive", {"alpha_rule": "vibes"})
    with pytest.raises(ConfigError, match="alpha_momentum"):
        build_strategy("adaptive", {"alpha_momentum": 0.0})


def test_oracle_gives_excluded_parties_zero_weight():
    oracle = build_strategy("oracle", {"excluded_clients": [1]})
    new = oracle.aggregate(1, {"w": torch.tensor([0.0])}, [result(0, {"w": torch.tensor([1.0])}), result(1, {"w": torch.tensor([9.0])})], [])
    assert new["w"].item() == 1.0


def test_global_loss_probe_reports_loss_entropy_confidence_and_accuracy_by_hand():
    class FixedLogits(torch.nn.Module):
        def forward(self, x):
            # two classes with probabilities (0.75, 0.25) for every input
            return torch.log(torch.tensor([[0.75, 0.25]])).expand(len(x), 2)

    from types import SimpleNamespace

    def trainer_with(x, y):
        loader = DataLoader(TensorDataset(x, y), batch_size=2, shuffle=True, generator=torch.Generator().manual_seed(0))
        return SimpleNamespace(train_dataloader=loader)

    module = SimpleNamespace(model=FixedLogits(), report={})
    x, y = torch.zeros(4, 1), torch.tensor([0, 0, 0, 1])
    trainer = trainer_with(x, y)
    shuffling_state, global_state = trainer.train_dataloader.generator.get_state(), torch.get_rng_state()
    GlobalLossProbe(batch_size=3).on_train_start(trainer, module)
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert module.report["pre_train_loss"] == pytest.approx((-3 * math.log(0.75) - math.log(0.25)) / 4)
    assert module.report["pre_train_entropy"] == pytest.approx(entropy)
    assert module.report["pre_train_confidence"] == pytest.approx(0.75)
    assert module.report["pre_train_accuracy"] == pytest.approx(0.75)
    # the probe reads its own loader: local training's shuffling is left where it was
    assert torch.equal(trainer.train_dataloader.generator.get_state(), shuffling_state)
    # nor does it draw from the global generator, which dropout in local training uses
    assert torch.equal(torch.get_rng_state(), global_state)
    # the confidence needs no labels: labels that all disagree leave it at 0.75
    GlobalLossProbe().on_train_start(trainer_with(x, torch.ones(4, dtype=torch.long)), module)
    assert module.report["pre_train_confidence"] == pytest.approx(0.75)
    assert module.report["pre_train_accuracy"] == 0.0
