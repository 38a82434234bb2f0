import math

import torch

from fedlight.callbacks import MoonContrastive
from tests.strategies.helpers import ScalarModel, fake_module, fake_trainer


def test_contrastive_term_hand_computed():
    # previous local model: w = -1 (the strategy reads it from the store)
    module = fake_module(1.0)  # global model (and the local one at the start): w = 1
    term = MoonContrastive(mu=2.0, tau=0.5, previous=ScalarModel(-1.0).state_dict())
    term.on_fit_start(fake_trainer(), module)
    x = torch.tensor([[1.0, 2.0]])
    z = module.model.embed(x)  # identical to z_glob (cos 1), opposite to z_prev (cos -1)
    loss = term.loss_term(module, x, None, z, None)
    # mu * -log(e^{1/tau} / (e^{1/tau} + e^{-1/tau})) = 2 * log(1 + e^{-4})
    assert math.isclose(float(loss), 2 * math.log1p(math.exp(-4.0)), rel_tol=1e-5)
    term.on_train_end(fake_trainer(), module)
    assert torch.equal(module.report["state_updates"]["moon_previous"]["w"], torch.tensor([1.0]))


def test_first_round_uses_the_global_model_as_previous():
    module = fake_module(1.0)
    term = MoonContrastive(mu=1.0, tau=1.0)
    term.on_fit_start(fake_trainer(), module)
    x = torch.tensor([[1.0, 0.0]])
    loss = term.loss_term(module, x, None, module.model.embed(x), None)
    assert math.isclose(float(loss), math.log(2.0), rel_tol=1e-6)  # both pairs equal
