"""register_strategy: decorator and call forms, refusals, and building a registered strategy."""

import pytest

from fedlight.errors import ConfigError
from fedlight.strategies import (
    BUILTIN_STRATEGIES,
    STRATEGIES,
    FedAvg,
    Strategy,
    build_strategy,
    register_strategy,
    strategy_options,
    unregister_strategy,
)


@pytest.fixture(autouse=True)
def restore_registry():
    saved = dict(STRATEGIES)
    yield
    STRATEGIES.clear()
    STRATEGIES.update(saved)


class _Halfway(FedAvg):
    """FedAvg that moves the global model half the way to the average."""

    def __init__(self, step: float = 0.5):
        self.step = step

    def aggregate(self, server_round, global_params, results, failures):
        averaged = super().aggregate(server_round, global_params, results, failures)
        return {k: v + self.step * (averaged[k] - v) for k, v in global_params.items()}


def test_builtins_are_registered():
    assert BUILTIN_STRATEGIES == {"fedavg", "fedprox", "scaffold", "moon", "fedadam", "adaptive", "oracle", "median",
                                  "trimmed_mean", "krum", "multi_krum", "bulyan", "centered_clipping"}
    assert set(STRATEGIES) == set(BUILTIN_STRATEGIES)


def test_decorator_without_arguments_uses_the_class_name_attribute():
    @register_strategy
    class Named(_Halfway):
        name = "halfway_test"

    assert STRATEGIES["halfway_test"] is Named
    strategy = build_strategy("halfway_test", {"step": 0.25, "prox_mu": 3.0})  # options it does not declare are dropped
    assert isinstance(strategy, Named) and strategy.step == 0.25
    assert strategy_options("halfway_test") == {"step"}


@pytest.mark.parametrize("form", ["keyword", "positional"])
def test_decorator_with_a_name(form):
    decorator = register_strategy(name="halfway_named") if form == "keyword" else register_strategy("halfway_named")

    @decorator
    class Unnamed(_Halfway):
        pass

    assert STRATEGIES["halfway_named"] is Unnamed
    assert Unnamed.name == "halfway_named"  # a class without a name gets the registered one
    assert isinstance(build_strategy("halfway_named"), Unnamed)


def test_call_form_returns_the_class_and_may_alias():
    assert register_strategy(_Halfway, name="halfway_alias") is _Halfway
    assert STRATEGIES["halfway_alias"] is _Halfway
    assert unregister_strategy("halfway_alias") is _Halfway
    assert "halfway_alias" not in STRATEGIES


def test_duplicate_names_are_refused():
    with pytest.raises(ConfigError, match="'fedavg' is already registered"):
        register_strategy(_Halfway, name="fedavg")

    @register_strategy(name="halfway_once")
    class Once(_Halfway):
        pass

    with pytest.raises(ConfigError, match="'halfway_once' is already registered"):
        register_strategy(Once)
    assert STRATEGIES["halfway_once"] is Once


def test_non_strategies_are_refused():
    class NotAStrategy:
        name = "nope"

    with pytest.raises(ConfigError, match="is not a subclass of fedlight.strategies.Strategy"):
        register_strategy(NotAStrategy)
    with pytest.raises(ConfigError, match="is not a subclass"):
        register_strategy(FedAvg(), name="instance")

    class Abstract(Strategy):
        name = "abstract_test"

    with pytest.raises(ConfigError, match="Abstract does not implement aggregate"):
        register_strategy(Abstract)

    class NoName(_Halfway):
        pass

    with pytest.raises(ConfigError, match="NoName has no name"):
        register_strategy(NoName)
    with pytest.raises(ConfigError, match="must be a non-empty word"):
        register_strategy(NoName, name="two words")
    assert set(STRATEGIES) == set(BUILTIN_STRATEGIES)


def test_builtins_cannot_be_unregistered():
    with pytest.raises(ConfigError, match="built in"):
        unregister_strategy("fedavg")
    with pytest.raises(ConfigError, match="no strategy named 'ghost'"):
        unregister_strategy("ghost")


def test_a_registered_strategy_runs_in_the_loop(tiny_data):
    import torch

    from fedlight.compat import check_model_support
    from fedlight.loop import FederatedLoop
    from fedlight.models import build_model

    register_strategy(_Halfway, name="halfway_loop")
    torch.manual_seed(0)
    model = build_model("small_cnn", tiny_data.input_shape, tiny_data.num_classes)
    check_model_support(model, strategy="halfway_loop", dp_mode="off", alpha_rule=None)
    loop = FederatedLoop(
        model=model, data=tiny_data, strategy=build_strategy("halfway_loop"), rounds=1, clients_per_round=2,
        local_epochs=1, batch_size=4, lr=0.1,
    )
    start = loop.global_params()
    loop.run()
    # half of FedAvg's step, exactly
    torch.manual_seed(0)
    reference = FederatedLoop(
        model=build_model("small_cnn", tiny_data.input_shape, tiny_data.num_classes), data=tiny_data,
        strategy=build_strategy("fedavg"), rounds=1, clients_per_round=2, local_epochs=1, batch_size=4, lr=0.1,
    )
    reference.run()
    for k, v in start.items():
        assert torch.allclose(loop.global_params()[k] - v, 0.5 * (reference.global_params()[k] - v), atol=1e-6), k
    loop.store.close()
    reference.store.close()


def test_needs_embedding_declared_by_a_registered_strategy_is_enforced():
    from torch import nn

    from fedlight.compat import check_model_support

    @register_strategy(name="needs_z")
    class NeedsZ(_Halfway):
        needs_embedding = True

    with pytest.raises(ConfigError, match=r"strategy needs_z needs a model with embed\(x\) and head\(z\); .*Linear has neither"):
        check_model_support(nn.Linear(3, 2), strategy="needs_z", dp_mode="off", alpha_rule=None)
