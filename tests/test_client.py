import math

import lightning as L
import pytest
import torch
from lightning.pytorch import Callback

from fedlight.client import (
    ClientModule,
    GradientEdit,
    LossTerm,
    TrainLossRecorder,
    fit_client,
    local_model,
    make_loader,
)
from fedlight.interrupts import Terminated
from fedlight.models import build_model


class _InterruptAtFirstBatch(Callback):
    def __init__(self, interrupt):
        self.interrupt = interrupt

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        raise self.interrupt


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt(), Terminated()])
def test_an_interrupt_inside_fit_stays_an_interrupt(interrupt):
    # Lightning turns it into sys.exit(1), which would end the MLflow run FAILED
    module = ClientModule(build_model("small_cnn", input_shape=(1, 8, 8), num_classes=3), lr=0.1)
    loader = make_loader(torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long), batch_size=2, seed=0)
    with pytest.raises(type(interrupt)):
        fit_client(module, loader, epochs=1, callbacks=[_InterruptAtFirstBatch(interrupt)])


class _Plain(torch.nn.Module):
    """No embed/head: ClientModule must use forward."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)

    def forward(self, x):
        return self.linear(x)


def _tabular_loader(n=8, batch=4):
    gen = torch.Generator().manual_seed(0)
    return make_loader(torch.randn(n, 3, generator=gen), torch.randint(0, 2, (n,), generator=gen), batch_size=batch, seed=0)


def test_client_module_trains_a_plain_module_through_forward():
    model = _Plain()
    before = model.linear.weight.detach().clone()
    module = ClientModule(model, lr=0.5)
    steps = fit_client(module, _tabular_loader(), epochs=2)
    assert steps == 4
    assert math.isfinite(module.mean_train_loss)
    assert not torch.equal(before, model.linear.weight)


def test_a_loss_term_that_needs_the_embedding_is_refused_for_a_plain_module():
    from fedlight.callbacks import MoonContrastive
    from fedlight.errors import ConfigError

    module = ClientModule(_Plain(), lr=0.1)
    with pytest.raises(ConfigError, match=r"MoonContrastive needs a model with embed\(x\) and head\(z\); tests.test_client._Plain"):
        fit_client(module, _tabular_loader(), epochs=1, callbacks=[MoonContrastive(mu=1.0, tau=0.5)])


class _LogitsOnlyTerm(LossTerm):
    needs_embedding = False

    def __init__(self):
        self.seen = []

    def loss_term(self, module, x, y, embedding, logits):
        self.seen.append(embedding)
        return logits.pow(2).sum(dim=1) * 0.0


def test_a_loss_term_without_the_embedding_works_with_a_plain_module():
    term = _LogitsOnlyTerm()
    fit_client(ClientModule(_Plain(), lr=0.1), _tabular_loader(), epochs=1, callbacks=[term])
    assert term.seen == [None, None]


@pytest.mark.parametrize(("max_steps", "expected"), [(None, 2), (1, 1), (5, 5)])
def test_max_steps_counts_optimizer_steps_across_epochs(max_steps, expected):
    module = ClientModule(_Plain(), lr=0.1)
    assert fit_client(module, _tabular_loader(n=8, batch=4), epochs=1, max_steps=max_steps) == expected


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_max_steps_must_be_a_positive_integer(bad):
    from fedlight.errors import ConfigError

    with pytest.raises(ConfigError, match="local steps must be a positive integer"):
        fit_client(ClientModule(_Plain(), lr=0.1), _tabular_loader(), epochs=1, max_steps=bad)


class _ConstantLossLit(L.LightningModule):
    """training_step returns batch_idx + 1 (plus a zero with a graph), so the mean is known by hand."""

    def __init__(self, as_dict):
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)
        self.as_dict = as_dict

    def forward(self, x):
        return self.linear(x)

    def training_step(self, batch, batch_idx):
        loss = self(batch[0]).sum() * 0.0 + float(batch_idx + 1)
        return {"loss": loss, "other": 3} if self.as_dict else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("as_dict", [False, True])
def test_train_loss_recorder_weights_the_returned_losses_by_batch_size(as_dict):
    recorder = TrainLossRecorder()
    # 10 rows in batches of 4: sizes 4, 4, 2 with losses 1, 2, 3 -> (4 + 8 + 6) / 10
    steps = fit_client(_ConstantLossLit(as_dict), _tabular_loader(n=10, batch=4), epochs=1, callbacks=[recorder])
    assert steps == 3 and recorder.batches == 3
    assert recorder.mean_train_loss == pytest.approx(1.8)


class _RecordingEdit(GradientEdit):
    def __init__(self):
        self.modules = []

    def edit_gradients(self, module):
        self.modules.append(module)
        for p in local_model(module).parameters():
            p.grad.zero_()


def test_gradient_edits_reach_a_users_lightning_module_through_the_callback_hook():
    lit = _ConstantLossLit(False)
    lit.training_step = lambda batch, batch_idx: torch.nn.functional.cross_entropy(lit(batch[0]), batch[1])
    before = {k: v.clone() for k, v in lit.state_dict().items()}
    edit = _RecordingEdit()
    fit_client(lit, _tabular_loader(), epochs=1, callbacks=[edit])
    assert edit.modules == [lit, lit]
    # zeroed gradients: plain SGD leaves the weights where they were
    assert all(torch.equal(before[k], v) for k, v in lit.state_dict().items())


def test_gradient_edits_run_once_per_step_for_a_client_module():
    edit = _RecordingEdit()
    module = ClientModule(_Plain(), lr=0.1)
    fit_client(module, _tabular_loader(), epochs=1, callbacks=[edit])
    assert edit.modules == [module, module]


class _Marker(Callback):
    pass


class _FakeEntryPoint:
    name = "fake"

    def __init__(self):
        self.loads = 0

    def load(self):
        self.loads += 1
        return lambda: _Marker()


def test_external_callback_factories_are_looked_up_once_and_called_for_every_trainer(monkeypatch):
    import fedlight.client as client

    point, lookups = _FakeEntryPoint(), []

    def fake_entry_points(*, group):
        lookups.append(group)
        return [point]

    monkeypatch.setattr(client, "entry_points", fake_entry_points)
    client._callback_factories.cache_clear()
    try:
        trainers = [L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                              enable_model_summary=False) for _ in range(3)]
    finally:
        client._callback_factories.cache_clear()
    markers = [[cb for cb in t.callbacks if isinstance(cb, _Marker)] for t in trainers]
    assert [len(m) for m in markers] == [1, 1, 1]
    assert len({id(m[0]) for m in markers}) == 3  # each Trainer its own callback
    assert lookups == ["lightning.pytorch.callbacks_factory"]
    assert point.loads == 3
