import torch

from fedlight.callbacks import ProximalTerm
from fedlight.strategies import build_strategy
from tests.strategies.helpers import fake_module, fake_trainer


def test_proximal_gradient_is_mu_times_distance_to_global():
    module = fake_module(2.0)
    term = ProximalTerm(mu=0.5)
    term.on_fit_start(fake_trainer(), module)
    with torch.no_grad():
        module.model.w.fill_(3.0)  # the local model moved from 2 to 3
    module.model.w.grad = torch.tensor([0.25])
    term.edit_gradients(module)
    # 0.25 + 0.5 * (3 - 2)
    assert torch.allclose(module.model.w.grad, torch.tensor([0.75]))


def test_fedprox_plans_a_proximal_term_per_client():
    strategy = build_strategy("fedprox", {"prox_mu": 0.1})
    plans = strategy.configure_round(1, [3, 5], {})
    assert [p.client_id for p in plans] == [3, 5]
    assert all(isinstance(p.callbacks[0], ProximalTerm) and p.callbacks[0].mu == 0.1 for p in plans)
