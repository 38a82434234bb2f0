"""Client-side algorithm logic as Lightning callbacks.

Each callback joins one client's local fit through its strategy's
``configure_round``; none of them copies the training loop. Gradient edits
happen in ``on_before_optimizer_step``; extra loss terms implement
:class:`~fedlight.client.LossTerm`; what the server needs back goes into
``pl_module.report``; what the client keeps for its next round goes into
:func:`~fedlight.client.client_state_updates`, which the driver writes to
the state store (a callback never touches the store: the task may run on
another machine).

The callbacks reach the federated model through
:func:`~fedlight.client.local_model` and the server's report through
:func:`~fedlight.client.client_report`, so that FedProx, SCAFFOLD and the
global-loss probe also join the fit of a user's own LightningModule; MOON's
loss term needs :class:`~fedlight.client.ClientModule`. What each strategy
supports with which kind of model: :mod:`fedlight.compat`.
"""

from __future__ import annotations

import copy

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback
from torch.utils.data import DataLoader

from fedlight.client import ClientModule, GradientEdit, LossTerm, client_report, client_state_updates, local_model
from fedlight.errors import ConfigError
from fedlight.models import model_name

Params = dict[str, torch.Tensor]


def _trainable(module: ClientModule | L.LightningModule) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in local_model(module).named_parameters() if p.requires_grad}


def _is_user_lightning_module(pl_module) -> bool:
    return isinstance(pl_module, L.LightningModule) and not isinstance(pl_module, ClientModule)


def constant_sgd_lr(trainer: L.Trainer, pl_module: L.LightningModule) -> float:
    """The one learning rate of a user LightningModule's single SGD optimizer (SCAFFOLD's option II needs it)."""
    optimizers = list(trainer.optimizers)
    name = model_name(pl_module)
    if len(optimizers) != 1 or not isinstance(optimizers[0], torch.optim.SGD):
        kinds = ", ".join(type(o).__name__ for o in optimizers) or "none"
        raise ConfigError(f"strategy scaffold needs one torch.optim.SGD optimizer; {name}.configure_optimizers gave {kinds}")
    rates = {float(group["lr"]) for group in optimizers[0].param_groups}
    if len(rates) != 1:
        raise ConfigError(f"strategy scaffold needs one learning rate for all parameters; {name} uses {sorted(rates)}")
    return rates.pop()


class ProximalTerm(GradientEdit):
    """FedProx's proximal term mu/2 * ||w - w_global||^2, applied as its gradient.

    Adding ``mu * (w - w_global)`` to each gradient is exactly the gradient of
    the term and costs no extra forward pass. ``w_global`` is the model as the
    fit starts (the loop loads the global weights before fitting).
    """

    def __init__(self, mu: float):
        self.mu = mu
        self._anchor: dict[str, torch.Tensor] = {}

    def on_fit_start(self, trainer: L.Trainer, pl_module: ClientModule) -> None:
        self._anchor = {n: p.detach().clone() for n, p in _trainable(pl_module).items()}

    def edit_gradients(self, module: ClientModule) -> None:
        for name, p in _trainable(module).items():
            if p.grad is not None:
                p.grad.add_(p.detach() - self._anchor[name], alpha=self.mu)


class ScaffoldCorrection(GradientEdit):
    """SCAFFOLD's drift correction and option-II control-variate update.

    Each local step uses ``grad + c - c_i``. After the fit, with K the optimizer
    steps actually taken and lr the local learning rate,
    ``c_i+ = c_i - c + (x - y_i) / (K * lr)``; ``c_i+`` is the client's state
    update (``scaffold_control``) and ``delta_c = c_i+ - c_i`` is reported to
    the server.

    For a user's own LightningModule, lr is the learning rate of the one
    ``torch.optim.SGD`` its ``configure_optimizers`` returns; anything else,
    or a rate that changes during the fit, is a ConfigError (option II
    divides by the rate of the steps actually taken).
    """

    def __init__(self, *, server_control: Params, client_control: Params):
        self.server_control = server_control
        self.client_control = client_control
        self._start: Params = {}
        self._correction: Params = {}

    def on_fit_start(self, trainer: L.Trainer, pl_module: ClientModule) -> None:
        params = _trainable(pl_module)
        self._start = {n: p.detach().clone() for n, p in params.items()}
        self._correction = {n: self.server_control[n] - self.client_control[n] for n in params}
        # a user's LightningModule: lr from its own optimizer, which must be SGD with a constant rate
        self._lr = constant_sgd_lr(trainer, pl_module) if _is_user_lightning_module(pl_module) else None

    def _check_constant_lr(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        lr = constant_sgd_lr(trainer, pl_module)
        if lr != self._lr:
            raise ConfigError(
                f"strategy scaffold needs a constant learning rate; {model_name(pl_module)}'s moved from "
                f"{self._lr} to {lr} during the fit (a scheduler?)"
            )

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer) -> None:
        if _is_user_lightning_module(pl_module):
            self._check_constant_lr(trainer, pl_module)
        super().on_before_optimizer_step(trainer, pl_module, optimizer)

    def edit_gradients(self, module: ClientModule) -> None:
        for name, p in _trainable(module).items():
            if p.grad is not None:
                p.grad.add_(self._correction[name])

    def on_train_end(self, trainer: L.Trainer, pl_module: ClientModule) -> None:
        steps = int(trainer.global_step)
        if steps == 0:
            raise RuntimeError("SCAFFOLD client took no optimizer step")
        if _is_user_lightning_module(pl_module):
            self._check_constant_lr(trainer, pl_module)
            lr = self._lr
        else:
            lr = pl_module.lr
        scale = 1.0 / (steps * lr)
        new_control = {}
        for name, p in _trainable(pl_module).items():
            new_control[name] = (
                self.client_control[name] - self.server_control[name] + (self._start[name] - p.detach()) * scale
            )
        client_report(trainer, pl_module)["control_delta"] = {n: new_control[n] - self.client_control[n] for n in new_control}
        client_state_updates(trainer, pl_module)["scaffold_control"] = new_control


class MoonContrastive(LossTerm):
    """MOON's model-contrastive term mu * l_con on the projection output z.

    l_con = -log(exp(cos(z, z_glob)/tau) / (exp(cos(z, z_glob)/tau) + exp(cos(z, z_prev)/tau))),
    with z_glob from the frozen global model and z_prev from the client's
    frozen previous local model (``previous``, read from the store by the
    strategy; the global model on its first round). The new local model is
    the client's state update ``moon_previous``, its next round's previous model.
    """

    needs_embedding = True

    def __init__(self, *, mu: float, tau: float, previous: Params | None = None):
        self.previous = previous
        self.mu = mu
        self.tau = tau
        self._global = None
        self._previous = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: ClientModule) -> None:
        if _is_user_lightning_module(pl_module):
            raise ConfigError(f"strategy moon needs fedlight's training step; {model_name(pl_module)} is a LightningModule with its own")
        self._global = copy.deepcopy(pl_module.model).eval().requires_grad_(False)
        self._previous = copy.deepcopy(self._global)
        if self.previous is not None:
            self._previous.load_state_dict(self.previous)

    def loss_term(self, module, x, y, embedding, logits) -> torch.Tensor:
        with torch.no_grad():
            z_global = self._global.embed(x)
            z_previous = self._previous.embed(x)
        similarities = torch.stack(
            [F.cosine_similarity(embedding, z_global, dim=1), F.cosine_similarity(embedding, z_previous, dim=1)], dim=1
        ) / self.tau
        # -log softmax at index 0 (the global model is the positive pair), per sample
        targets = torch.zeros(len(x), dtype=torch.long, device=x.device)
        return self.mu * F.cross_entropy(similarities, targets, reduction="none")

    def on_train_end(self, trainer: L.Trainer, pl_module: ClientModule) -> None:
        client_state_updates(trainer, pl_module)["moon_previous"] = {
            k: v.detach().clone() for k, v in pl_module.model.state_dict().items()
        }
        self._global = self._previous = None


class GlobalLossProbe(Callback):
    """Reports how the global model fits the client's training data, before local training.

    Sent to the server: ``pre_train_loss`` (mean cross-entropy against the
    party's labels), ``pre_train_entropy`` (mean entropy of the global
    model's predictive distribution, which needs no labels),
    ``pre_train_confidence`` (mean probability of the predicted class, no
    labels either) and ``pre_train_accuracy``. A label-free quality signal
    for the server: parties whose labels disagree with what the federation
    has learned show a loss well above the model's own uncertainty, and
    match its top class less often than its confidence expects.

    It needs only the logits of ``model(x)``, so it works for a user's
    LightningModule too (its ``forward``). The probe reads the whole
    training set in order, in batches of ``batch_size``, through a loader
    of its own. Iterating the training
    loader instead would draw from its shuffling generator (or, under
    DP-SGD, its Poisson sampler's), so that local training saw other
    batches than it would without the probe, and under DP it would measure
    a random subset only. The probe's loader has a generator of its own,
    because a loader without one draws its worker seed from torch's global
    generator, which a model with dropout would then see shifted.
    """

    def __init__(self, batch_size: int = 256):
        self.batch_size = batch_size

    def on_train_start(self, trainer: L.Trainer, pl_module: ClientModule) -> None:
        loss, entropy, confidence, correct, count = 0.0, 0.0, 0.0, 0, 0
        model = local_model(pl_module)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            train_loader = trainer.train_dataloader
            probe_loader = DataLoader(
                train_loader.dataset, batch_size=self.batch_size, shuffle=False, generator=torch.Generator(),
                collate_fn=train_loader.collate_fn,
            )
            for x, y in probe_loader:
                log_probs = F.log_softmax(model(x), dim=1)
                loss += float(F.nll_loss(log_probs, y, reduction="sum"))
                entropy += float(-(log_probs.exp() * log_probs).sum())
                top_log_prob, top_class = log_probs.max(dim=1)
                confidence += float(top_log_prob.exp().sum())
                correct += int((top_class == y).sum())
                count += len(y)
        model.train(was_training)
        count = max(count, 1)
        client_report(trainer, pl_module).update(
            pre_train_loss=loss / count, pre_train_entropy=entropy / count,
            pre_train_confidence=confidence / count, pre_train_accuracy=correct / count,
        )
