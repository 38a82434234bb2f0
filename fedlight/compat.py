"""Which strategies, DP modes and alpha rules work with which kind of model.

:func:`check_model_support` refuses an unsupported combination before a run
starts, with one line that says why. Three kinds of model
(:func:`fedlight.models.model_kind`, :func:`fedlight.models.has_embed_head`):

* **nn.Module**: a plain ``torch.nn.Module`` returning class logits;
  fedlight trains it (cross-entropy, the loop's SGD with ``--lr`` and
  ``--momentum``, the strategy's callbacks) inside
  :class:`~fedlight.client.ClientModule`;
* **nn.Module with embed/head**: the same, with ``embed(x)`` and
  ``head(z)`` such that ``forward(x) == head(embed(x))``; every built-in
  (``small_cnn``, ``leaf_cnn``, ``logreg``, ``mlp``) is one;
* **LightningModule**: a user's ``lightning.LightningModule`` with its own
  ``training_step`` and ``configure_optimizers`` (and a ``forward``
  returning logits, for evaluation), fitted as it is.

=========================================  ==============  ====================  ======================
strategy / DP mode / alpha rule            nn.Module       nn.Module with        LightningModule
                                                           embed/head
=========================================  ==============  ====================  ======================
fedavg, fedadam, oracle                    yes             yes                   yes
fedprox                                    yes             yes                   yes (1)
scaffold                                   yes (2)         yes (2)               yes (2, 3)
moon                                       no              yes                   no
adaptive, every alpha rule                 yes             yes                   yes (4)
(uniform, loss, similarity, update_trust,
global_loss, quality, label_fit)
dp off                                     yes             yes                   yes
dp sample (DP-SGD, Opacus)                 yes (5)         yes (5)               no
dp client (DP-FedAvg, server side)         yes             yes                   yes
local steps (``max_steps``)                yes             yes                   yes
=========================================  ==============  ====================  ======================

1. The proximal gradient mu (w - w_global) is added from the callback's
   ``on_before_optimizer_step``, after the module's backward pass, whatever
   its optimizer.
2. Every floating-point entry of the model's ``state_dict`` must be a
   trainable parameter: SCAFFOLD keeps control variates for parameters
   only, so BatchNorm statistics or frozen weights are refused.
3. Option II needs the local learning rate: the module's
   ``configure_optimizers`` must give one ``torch.optim.SGD`` with one
   constant learning rate (momentum is allowed, as with ``--momentum``).
   Checked here when ``configure_optimizers`` can run outside a Trainer,
   and at every step of the fit.
4. The global-loss probe only needs the logits of ``model(x)``, the
   module's ``forward``; ``loss`` uses the loop's cross-entropy on the
   client's validation split, like every other kind.
5. The layers must be ones Opacus computes per-sample gradients for;
   ``fedlight.experiment.make_private_compatible`` replaces BatchNorm and
   refuses the rest before training. DP-SGD wraps ClientModule's training
   step (ghost clipping needs its per-sample losses), which a
   LightningModule replaces with its own.

A registered strategy of your own (:func:`fedlight.strategies.register_strategy`)
declares ``needs_embedding = True`` when its callbacks read ``embed``/``head``
and ``needs_client_module = True`` when they add loss terms; otherwise it is
taken to work with every kind, and the loop still refuses a
:class:`~fedlight.client.LossTerm` in a LightningModule's fit.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable

import torch
from torch import nn

from fedlight.config import DP_MODES
from fedlight.errors import ConfigError
from fedlight.models import has_embed_head, is_lightning_module, model_name


def _strategy_class(strategy):
    from fedlight.strategies import STRATEGIES, Strategy

    if isinstance(strategy, str):
        if strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
        return strategy, STRATEGIES[strategy]
    cls = strategy if inspect.isclass(strategy) else type(strategy)
    if not issubclass(cls, Strategy):
        raise ConfigError(f"{strategy!r} is not a fedlight strategy")
    return getattr(cls, "name", cls.__qualname__), cls


def _missing_embed_head(model: nn.Module) -> str:
    has = [m for m in ("embed", "head") if callable(getattr(model, m, None))]
    return "neither" if not has else f"{has[0]} but no {'head' if has[0] == 'embed' else 'embed'}"


def _untrainable_float_entries(model: nn.Module) -> list[str]:
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    return [k for k, v in model.state_dict().items() if torch.is_floating_point(v) and k not in trainable]


def _optimizers_outside_trainer(model: nn.Module) -> list[torch.optim.Optimizer] | None:
    """The optimizers a LightningModule's configure_optimizers returns, or None where it cannot run outside a fit."""
    try:
        config = model.configure_optimizers()
    except Exception:  # noqa: BLE001 - e.g. it reads self.trainer; the fit checks again
        return None
    found: list[torch.optim.Optimizer] = []

    def collect(item) -> None:
        if isinstance(item, torch.optim.Optimizer):
            found.append(item)
        elif isinstance(item, dict):
            collect(item.get("optimizer"))
        elif isinstance(item, (list, tuple)):
            for entry in item:
                collect(entry)

    collect(config)
    # ([optimizers], [schedulers]) is allowed by Lightning; schedulers are no optimizers
    return found or None


def _check_scaffold_optimizer(model: nn.Module, name: str) -> None:
    optimizers = _optimizers_outside_trainer(model)
    if optimizers is None:
        return
    if len(optimizers) != 1 or not isinstance(optimizers[0], torch.optim.SGD):
        kinds = ", ".join(type(o).__name__ for o in optimizers)
        raise ConfigError(f"strategy scaffold needs one torch.optim.SGD optimizer; {name}.configure_optimizers gives {kinds}")
    rates = {float(group["lr"]) for group in optimizers[0].param_groups}
    if len(rates) != 1:
        raise ConfigError(f"strategy scaffold needs one learning rate for all parameters; {name} uses {sorted(rates)}")


def _listed(names: Iterable[str], limit: int = 3) -> str:
    names = list(names)
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_model_support(model: nn.Module, *, strategy, dp_mode: str, alpha_rule: str | None) -> None:
    """Raise :class:`ConfigError` (one line) if ``model`` cannot run with this strategy, DP mode and alpha rule.

    ``strategy`` is a registered name (or a Strategy class or instance);
    ``dp_mode`` one of ``off``, ``sample``, ``client``; ``alpha_rule`` the
    adaptive aggregator's rule (ignored for other strategies; None means
    its default). See the module docstring for the table.
    """
    from fedlight.strategies import AdaptiveTrust, Scaffold
    from fedlight.strategies.trust import ALPHA_RULES

    strategy_name, cls = _strategy_class(strategy)
    if dp_mode not in DP_MODES:
        raise ConfigError(f"unknown --dp-mode {dp_mode!r}; choose from {', '.join(DP_MODES)}")
    name = model_name(model)
    lightning = is_lightning_module(model)

    if getattr(cls, "needs_client_module", False) and lightning:
        raise ConfigError(
            f"strategy {strategy_name} adds a term to fedlight's loss; {name} is a LightningModule with its own "
            "training_step (use a plain nn.Module with embed(x) and head(z))"
        )
    if getattr(cls, "needs_embedding", False) and not has_embed_head(model):
        raise ConfigError(f"strategy {strategy_name} needs a model with embed(x) and head(z); {name} has {_missing_embed_head(model)}")
    if issubclass(cls, Scaffold):
        untrainable = _untrainable_float_entries(model)
        if untrainable:
            raise ConfigError(
                f"strategy {strategy_name} keeps control variates for trainable parameters only; {name} also has "
                f"floating-point buffers or frozen parameters: {_listed(untrainable)}"
            )
        if lightning:
            _check_scaffold_optimizer(model, name)
    if issubclass(cls, AdaptiveTrust) and alpha_rule is not None and alpha_rule not in ALPHA_RULES:
        raise ConfigError(f"unknown alpha rule {alpha_rule!r}; choose from {', '.join(ALPHA_RULES)}")
    if dp_mode == "sample" and lightning:
        raise ConfigError(
            f"--dp-mode sample (DP-SGD) needs fedlight's training step; {name} is a LightningModule with its own "
            "(use --dp-mode client, or a plain nn.Module)"
        )


__all__ = ["DP_MODES", "check_model_support"]
