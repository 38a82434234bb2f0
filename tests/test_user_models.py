"""Bring your own model: user nn.Modules and LightningModules federated end to end, and the spec errors."""

from __future__ import annotations

import math
import sys
import textwrap

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedlight.compat import check_model_support
from fedlight.data import FederatedData
from fedlight.errors import ConfigError
from fedlight.loop import FederatedLoop
from fedlight.models import MODELS, build_model, describe_model, model_kind
from fedlight.privacy import ClientLevelDP, SampleLevelDP
from fedlight.state import ClientStateStore
from fedlight.strategies import STRATEGIES, build_strategy
from fedlight.strategies.trust import ALPHA_RULES
from tests.conftest import federated_from_sampler

FEATURES = 5
HERE = __name__  # "tests.test_user_models": the import path of the classes below


# --- user models ---------------------------------------------------------------


def _net(input_shape, num_classes, hidden):
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


class PlainNet(nn.Module):
    """A user's nn.Module without embed/head."""

    def __init__(self, input_shape, num_classes, hidden: int = 8):
        super().__init__()
        self.net = _net(input_shape, num_classes, hidden)

    def forward(self, x):
        return self.net(x)


class EmbedHeadNet(nn.Module):
    """A user's nn.Module with embed/head (MOON's contract)."""

    def __init__(self, input_shape, num_classes, hidden: int = 8):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), hidden), nn.ReLU())
        self.classifier = nn.Linear(hidden, num_classes)

    def embed(self, x):
        return self.body(x)

    def head(self, z):
        return self.classifier(z)

    def forward(self, x):
        return self.head(self.embed(x))


class UserLit(L.LightningModule):
    """A user's LightningModule with its own training_step (CE) and configure_optimizers (SGD).

    Same layers, built in the same order, as PlainNet: with lr 0.1 and no
    momentum it is the computation fedlight's ClientModule does on PlainNet.
    """

    def __init__(self, input_shape, num_classes, hidden: int = 8, lr: float = 0.1, return_dict: bool = False):
        super().__init__()
        self.net = _net(input_shape, num_classes, hidden)
        self.lr = lr
        self.return_dict = return_dict

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        return {"loss": loss} if self.return_dict else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class AdamLit(UserLit):
    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


class TrainerAdamLit(UserLit):
    """Its configure_optimizers needs the trainer, so only the fit can see the optimizer."""

    def configure_optimizers(self):
        assert self.trainer is not None
        return torch.optim.Adam(self.parameters(), lr=0.01)


class ScheduledLit(UserLit):
    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.lr)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1, 0.5), "interval": "step"}}


class NoLossLit(UserLit):
    def training_step(self, batch, batch_idx):
        return None


class BatchNormNet(PlainNet):
    def __init__(self, input_shape, num_classes):
        super().__init__(input_shape, num_classes)
        self.norm = nn.BatchNorm1d(num_classes)

    def forward(self, x):
        return self.norm(self.net(x))


class NoTrainingStepLit(L.LightningModule):
    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.net = _net(input_shape, num_classes, 4)

    def forward(self, x):
        return self.net(x)


class WrongWidth(PlainNet):
    def forward(self, x):
        return torch.cat([self.net(x), self.net(x)[:, :1]], dim=1)


class ReturnsTuple(PlainNet):
    def forward(self, x):
        return self.net(x), None


class OnlyNumClasses(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.linear = nn.Linear(FEATURES, num_classes)

    def forward(self, x):
        return self.linear(x)


class NoArguments(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(FEATURES, 2)

    def forward(self, x):
        return self.linear(x)


class NotAModule:
    def __init__(self, input_shape=None, num_classes=None):
        pass


def not_a_class(input_shape, num_classes):
    return PlainNet(input_shape, num_classes)


KINDS = {"plain": PlainNet, "embed_head": EmbedHeadNet, "lightning": UserLit}
# What the support table promises (written out here, not read from fedlight.compat)
UNSUPPORTED = {("plain", "moon"): "embed", ("lightning", "moon"): "moon"}


# --- data and loops ------------------------------------------------------------------


def make_tabular_federated(num_clients=2, per_client=16, features=FEATURES, num_classes=2, seed=0) -> FederatedData:
    """A linearly separable table: the class is the argmax of a fixed linear map of the row."""
    gen = torch.Generator().manual_seed(seed)
    weights = torch.randn(features, num_classes, generator=gen)

    def sample(n):
        x = torch.randn(n, features, generator=gen)
        return x, (x @ weights).argmax(dim=1)

    return federated_from_sampler(sample, num_clients=num_clients, per_client=per_client, test_size=24,
                                  num_classes=num_classes, input_shape=(features,), dataset="tabular")


@pytest.fixture(scope="module")
def table() -> FederatedData:
    return make_tabular_federated()


def _loop(data, spec, strategy="fedavg", *, options=None, rounds=2, privacy=None, store=None, averager=None, seed=0):
    torch.manual_seed(seed)
    model = build_model(spec, data.input_shape, data.num_classes)
    strategy_obj = build_strategy(strategy, options or {})
    if averager is not None:
        strategy_obj.averager = averager
    return FederatedLoop(
        model=model, data=data, strategy=strategy_obj, rounds=rounds, clients_per_round=len(data.clients),
        local_epochs=1, batch_size=4, lr=0.1, seed=seed, privacy=privacy, store=store,
    )


def _run_and_check(loop):
    before = loop.global_params()
    history = loop.run()
    assert [row["round"] for row in history] == [1, 2]
    assert all(row["clients_ok"] == 2 and row["clients_failed"] == 0 for row in history), history
    assert all(math.isfinite(row["train_loss"]) for row in history)
    assert all(0.0 <= row["test_accuracy"] <= 1.0 for row in history)
    after = loop.global_params()
    assert any(not torch.equal(before[k], after[k]) for k in before), "the global model did not move"
    loop.store.close()
    return history


# --- every registered strategy, every kind ---------------------------------------------


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_user_model_federates_with_every_supported_strategy(kind, strategy, table):
    spec = f"{HERE}:{KINDS[kind].__name__}"
    model = build_model(spec, table.input_shape, table.num_classes)
    if (kind, strategy) in UNSUPPORTED:
        with pytest.raises(ConfigError, match=UNSUPPORTED[kind, strategy]) as info:
            check_model_support(model, strategy=strategy, dp_mode="off", alpha_rule=None)
        message = str(info.value)
        assert "\n" not in message and KINDS[kind].__name__ in message and strategy in message
        return
    check_model_support(model, strategy=strategy, dp_mode="off", alpha_rule=None)
    _run_and_check(_loop(table, spec, strategy))


@pytest.mark.parametrize("rule", sorted(ALPHA_RULES))
@pytest.mark.parametrize("kind", ["plain", "lightning"])
def test_every_alpha_rule_works_with_user_models(kind, rule, table):
    spec = KINDS[kind]
    check_model_support(build_model(spec, table.input_shape, 2), strategy="adaptive", dp_mode="off", alpha_rule=rule)
    history = _run_and_check(_loop(table, spec, "adaptive", options={"alpha_rule": rule}))
    assert all("alpha_round_mean" in row for row in history)


def test_moon_refuses_a_plain_module_before_training_and_during_it(table):
    loop = _loop(table, PlainNet, "moon")
    # check_model_support is the first line of defence; the module refuses too if it is skipped
    with pytest.raises(ConfigError, match="MoonContrastive needs a model with embed"):
        loop.run()
    loop.store.close()


def test_a_lightning_module_refuses_loss_terms_in_the_loop(table):
    loop = _loop(table, UserLit, "moon")
    with pytest.raises(ConfigError, match="MoonContrastive adds to fedlight's loss"):
        loop.run()
    loop.store.close()


# --- the LightningModule path computes what fedlight's own step computes ------------------


@pytest.mark.parametrize("strategy", ["fedavg", "fedprox", "scaffold", "adaptive"])
def test_lightning_module_matches_the_client_module_on_the_same_network(strategy, table):
    # UserLit is PlainNet's network with fedlight's objective (CE, SGD lr 0.1):
    # FedProx's and SCAFFOLD's callbacks and the probe must act on it as on ClientModule
    options = {"prox_mu": 0.5} if strategy == "fedprox" else {}
    plain = _loop(table, PlainNet, strategy, options=options)
    lit = _loop(table, {"class_path": f"{HERE}.UserLit", "init_args": {"return_dict": True}}, strategy, options=options)
    assert plain.global_params().keys() == lit.global_params().keys()
    for key, value in plain.global_params().items():
        assert torch.equal(value, lit.global_params()[key]), "the two networks start from different weights"
    plain_history, lit_history = plain.run(), lit.run()
    for key, value in plain.global_params().items():
        assert torch.allclose(value, lit.global_params()[key], atol=1e-6), key
    for a, b in zip(plain_history, lit_history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        if strategy == "adaptive":
            assert a["alpha_round_mean"] == pytest.approx(b["alpha_round_mean"], rel=1e-5)
    plain.store.close()
    lit.store.close()


def test_the_global_loss_probe_reports_the_same_for_a_lightning_module(table):
    reports = []
    for spec in (PlainNet, UserLit):
        loop = _loop(table, spec, "adaptive", options={"alpha_rule": "label_fit"}, rounds=1)
        plans = loop.strategy.configure_round(1, [1], loop.global_params())
        reports.append(loop.train_client(plans[0], loop.global_params(), 1).extras)
        loop.store.close()
    plain, lit = reports
    assert set(plain) == set(lit) == {"pre_train_loss", "pre_train_entropy", "pre_train_confidence", "pre_train_accuracy"}
    for key in plain:
        assert lit[key] == pytest.approx(plain[key], rel=1e-6), key


def test_fedprox_pulls_a_lightning_module_towards_the_global_model(table):
    free = _loop(table, UserLit, "fedprox", options={"prox_mu": 0.0}, rounds=1)
    pulled = _loop(table, UserLit, "fedprox", options={"prox_mu": 5.0}, rounds=1)
    start = free.global_params()

    def distance(loop):
        return sum(float((loop.global_params()[k] - start[k]).pow(2).sum()) for k in start)

    free.run()
    pulled.run()
    assert distance(pulled) < 0.5 * distance(free)


# --- local steps ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["plain", "lightning"])
def test_local_steps_replace_epochs(kind, table):
    loop = _loop(table, KINDS[kind], "scaffold", rounds=1)
    loop.local_steps = 7  # 16 samples in batches of 4: 4 steps an epoch, so the loader is cycled
    plans = loop.strategy.configure_round(1, [0], loop.global_params())
    result = loop.train_client(plans[0], loop.global_params(), 1)
    assert result.num_steps == 7
    assert math.isfinite(result.train_loss)
    assert set(result.extras["control_delta"]) == {n for n, _ in loop.model.named_parameters()}
    loop.store.close()


# --- DP ------------------------------------------------------------------------------


def test_sample_level_dp_trains_a_plain_module(table):
    store = ClientStateStore()
    privacy = SampleLevelDP(store=store, clip=1.0, delta=1e-5, noise=0.5)
    privacy.calibrate(batches_per_epoch=[4, 4], local_epochs=1, rounds=2)
    model = build_model(PlainNet, table.input_shape, 2)
    check_model_support(model, strategy="fedprox", dp_mode="sample", alpha_rule=None)
    history = _run_and_check(_loop(table, PlainNet, "fedprox", privacy=privacy, store=store))
    assert history[-1]["dp_epsilon_max"] > 0


def test_sample_level_dp_refuses_a_lightning_module(table):
    model = build_model(UserLit, table.input_shape, 2)
    with pytest.raises(ConfigError, match="dp-mode sample .*UserLit is a LightningModule"):
        check_model_support(model, strategy="fedavg", dp_mode="sample", alpha_rule=None)
    # and the loop refuses it too, should the check be skipped
    store = ClientStateStore()
    privacy = SampleLevelDP(store=store, clip=1.0, delta=1e-5, noise=0.5)
    privacy.calibrate(batches_per_epoch=[4, 4], local_epochs=1, rounds=2)
    loop = _loop(table, UserLit, privacy=privacy, store=store)
    with pytest.raises(ConfigError, match="DP-SGD"):
        loop.run()
    store.close()


@pytest.mark.parametrize("strategy", ["fedavg", "adaptive"])
def test_client_level_dp_works_with_a_lightning_module(strategy, table):
    model = build_model(UserLit, table.input_shape, 2)
    check_model_support(model, strategy=strategy, dp_mode="client", alpha_rule="quality")
    averager = ClientLevelDP(clip=1.0, delta=1e-5, clients_per_round=2, num_clients=2, mean_client_size=16.0, rounds=2, noise=0.5)
    history = _run_and_check(_loop(table, UserLit, strategy, averager=averager))
    assert history[-1]["dp_epsilon_max"] > 0


# --- what check_model_support refuses besides MOON -------------------------------------


def test_scaffold_refuses_a_lightning_module_with_adam(table):
    model = build_model(AdamLit, table.input_shape, 2)
    with pytest.raises(ConfigError, match="scaffold needs one torch.optim.SGD optimizer; .*AdamLit.configure_optimizers gives Adam"):
        check_model_support(model, strategy="scaffold", dp_mode="off", alpha_rule=None)
    check_model_support(model, strategy="fedprox", dp_mode="off", alpha_rule=None)


def test_scaffold_refuses_adam_at_fit_time_when_the_optimizer_needs_the_trainer(table):
    model = build_model(TrainerAdamLit, table.input_shape, 2)
    check_model_support(model, strategy="scaffold", dp_mode="off", alpha_rule=None)  # cannot tell before the fit
    loop = _loop(table, TrainerAdamLit, "scaffold")
    with pytest.raises(ConfigError, match="torch.optim.SGD"):
        loop.run()
    loop.store.close()


def test_scaffold_refuses_a_learning_rate_that_moves(table):
    loop = _loop(table, ScheduledLit, "scaffold")
    with pytest.raises(ConfigError, match="constant learning rate"):
        loop.run()
    loop.store.close()
    # FedProx does not care
    _run_and_check(_loop(table, ScheduledLit, "fedprox"))


def test_scaffold_refuses_buffers(table):
    model = build_model(BatchNormNet, table.input_shape, 2)
    with pytest.raises(ConfigError, match="norm.running_mean, norm.running_var"):
        check_model_support(model, strategy="scaffold", dp_mode="off", alpha_rule=None)
    check_model_support(model, strategy="fedavg", dp_mode="off", alpha_rule=None)


def test_unknown_names_in_check_model_support(table):
    model = build_model(PlainNet, table.input_shape, 2)
    with pytest.raises(ConfigError, match="unknown strategy 'nope'"):
        check_model_support(model, strategy="nope", dp_mode="off", alpha_rule=None)
    with pytest.raises(ConfigError, match="unknown --dp-mode 'maybe'"):
        check_model_support(model, strategy="fedavg", dp_mode="maybe", alpha_rule=None)
    with pytest.raises(ConfigError, match="unknown alpha rule 'vibes'"):
        check_model_support(model, strategy="adaptive", dp_mode="off", alpha_rule="vibes")


def test_a_lightning_module_must_return_its_loss(table):
    loop = _loop(table, NoLossLit)
    with pytest.raises(ConfigError, match="training_step must return the loss"):
        loop.run()
    loop.store.close()


# --- build_model: specs and their errors -------------------------------------------------


@pytest.mark.parametrize(
    "spec", [f"{HERE}:PlainNet", f"{HERE}.PlainNet", {"class_path": f"{HERE}.PlainNet"}, PlainNet]
)
def test_spec_forms(spec):
    model = build_model(spec, (FEATURES,), 3)
    assert type(model) is PlainNet
    assert model(torch.zeros(2, FEATURES)).shape == (2, 3)
    assert describe_model(spec) == "PlainNet"
    assert model_kind(model) == "module"


def test_class_path_mapping_passes_init_args():
    model = build_model({"class_path": f"{HERE}:UserLit", "init_args": {"hidden": 5, "lr": 0.3}}, (FEATURES,), 2)
    assert model.net[1].out_features == 5 and model.lr == 0.3
    assert model_kind(model) == "lightning"
    mlp = build_model({"class_path": "mlp", "init_args": {"hidden": [32, 16]}}, (13,), 2)
    assert [m.out_features for m in mlp.modules() if isinstance(m, nn.Linear)] == [32, 16, 2]
    assert describe_model({"class_path": "mlp", "init_args": {"hidden": [32, 16]}}) == "mlp"


def test_input_shape_and_num_classes_are_passed_only_where_accepted():
    assert build_model(f"{HERE}:OnlyNumClasses", (FEATURES,), 4).linear.out_features == 4
    assert isinstance(build_model(f"{HERE}:NoArguments", (FEATURES,), 2), NoArguments)
    # init_args win over the injected values, and the output check catches the mismatch
    with pytest.raises(ConfigError, match=r"returned shape \[2, 3\], expected class logits \[2, 2\]"):
        build_model({"class_path": f"{HERE}:PlainNet", "init_args": {"num_classes": 3}}, (FEATURES,), 2)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tests.no_such_module_xyz:Net", "module tests.no_such_module_xyz is not importable"),
        ("no_such_pkg_xyz.nets.Net", "module no_such_pkg_xyz.nets is not importable"),
        (f"{HERE}:Missing", f"{HERE} has no attribute 'Missing'"),
        (f"{HERE}.Missing", f"{HERE} has no attribute 'Missing'"),
        (f"{HERE}:PlainNet.Inner", f"{HERE}.PlainNet has no attribute 'Inner'"),
        (f"{HERE}:not_a_class", "is a function, not a class"),
        (f"{HERE}:FEATURES", "is a int, not a class"),
        (f"{HERE}:NotAModule", "neither a torch.nn.Module nor a lightning.LightningModule"),
        ("collections.OrderedDict", "neither a torch.nn.Module"),
        (f"{HERE}:NoTrainingStepLit", "needs its own training_step and configure_optimizers"),
        ({"class_path": f"{HERE}:PlainNet", "init_args": {"bogus": 1}}, r"PlainNet\(bogus=1, .*TypeError: .*bogus"),
        ({"class_path": "small_cnn", "init_args": {"hidden": 3}}, "small_cnn.*TypeError"),
        ({"class_path": "mlp", "init_args": {"hidden": [0]}}, "ValueError: hidden sizes must be positive"),
        ({"class_path": f"{HERE}:PlainNet", "init_args": {"input_shape": (7,)}}, r"forward failed on a batch of shape \[2, 5\]"),
        ({"class_path": f"{HERE}:PlainNet", "extra": 1}, r"unknown keys \['extra'\]"),
        ({"init_args": {}}, "class_path must be"),
        ({"class_path": f"{HERE}:PlainNet", "init_args": [1]}, "init_args must be a mapping"),
        (f"{HERE}:WrongWidth", r"returned shape \[2, 3\], expected class logits \[2, 2\]"),
        (f"{HERE}:ReturnsTuple", "returned a tuple"),
        ("small_cnn", r"small_cnn needs images, input_shape \(channels, height, width\); got \(5,\)"),
        ("resnet", "unknown model 'resnet'; choose from"),
        (f"{HERE}:", "an import path is module:Class"),
    ],
)
def test_spec_errors_are_one_line_config_errors(spec, message):
    with pytest.raises(ConfigError, match=message) as info:
        build_model(spec, (FEATURES,), 2)
    assert "\n" not in str(info.value)


def test_an_import_error_inside_the_users_module_is_reported(tmp_path, monkeypatch):
    (tmp_path / "byom_broken_xyz.py").write_text("import a_dependency_that_is_missing_xyz\n")
    (tmp_path / "byom_syntax_xyz.py").write_text("def (:\n")
    (tmp_path / "byom_good_xyz.py").write_text(textwrap.dedent("""
        from torch import nn

        class Net(nn.Linear):
            def __init__(self, input_shape, num_classes):
                super().__init__(input_shape[0], num_classes)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("byom_broken_xyz", "byom_syntax_xyz", "byom_good_xyz"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.raises(ConfigError, match="importing byom_broken_xyz failed: No module named 'a_dependency_that_is_missing_xyz'"):
        build_model("byom_broken_xyz:Net", (FEATURES,), 2)
    with pytest.raises(ConfigError, match="importing byom_syntax_xyz failed: SyntaxError"):
        build_model("byom_syntax_xyz.Net", (FEATURES,), 2)
    assert build_model("byom_good_xyz.Net", (FEATURES,), 2).out_features == 2


def test_a_pytorch_lightning_module_gets_a_pointer_to_lightning():
    pl = pytest.importorskip("pytorch_lightning")

    class OldStyle(pl.LightningModule):
        pass

    if issubclass(OldStyle, L.LightningModule):
        pytest.skip("pytorch_lightning is an alias of lightning.pytorch here")
    with pytest.raises(ConfigError, match="needs lightning.LightningModule"):
        build_model(OldStyle, (FEATURES,), 2)


def test_the_output_check_leaves_the_random_stream_alone():
    class Noisy(PlainNet):
        def forward(self, x):
            return self.net(x) + torch.randn(len(x), 1)

    torch.manual_seed(0)
    build_model(Noisy, (FEATURES,), 2)
    after_build = torch.rand(3)
    torch.manual_seed(0)
    Noisy((FEATURES,), 2)
    assert torch.equal(after_build, torch.rand(3))


def test_builtins_are_all_listed():
    assert set(MODELS) == {"small_cnn", "leaf_cnn", "logreg", "mlp"}


@pytest.mark.parametrize("strategy", ["scaffold", "adaptive"])
def test_a_lightning_module_run_resumes_like_an_uninterrupted_one(strategy, table, tmp_path):
    straight = _loop(table, UserLit, strategy, rounds=3)
    straight.run()
    first = _loop(table, UserLit, strategy, rounds=3)
    first.rounds = 1
    first.run()
    first.save_checkpoint(tmp_path / "ckpt")
    first.store.close()
    resumed = _loop(table, UserLit, strategy, rounds=3)
    resumed.load_checkpoint(tmp_path / "ckpt")
    resumed.run()
    for key, value in straight.global_params().items():
        assert torch.allclose(value, resumed.global_params()[key], atol=1e-6), key
    straight.store.close()
    resumed.store.close()
