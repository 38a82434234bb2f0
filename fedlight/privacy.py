"""Differential privacy: DP-SGD on every party (sample level) or DP-FedAvg (client level).

Sample level — Abadi et al., "Deep Learning with Differential Privacy" (CCS
2016), through Opacus: each party clips every per-sample gradient to norm
``clip``, adds Gaussian noise ``noise * clip`` and samples its batches by
Poisson sampling (rate q_i = 1 / batches per epoch). Each party keeps one
accountant for the whole run in the client state store. With a target
epsilon, each party's noise multiplier is calibrated once, before training,
for the worst case that it takes part in every round.

Client level — McMahan et al., "Learning Differentially Private Recurrent
Language Models" (ICLR 2018), DP-FedAvg: each round the loop selects every
party independently with probability q = K / N (Poisson sampling; K is
``--clients-per-round``, the expected count), the server clips each
selected party's update to norm ``clip`` (S), weights it by w_i in [0, 1],
divides the sum by the fixed expected count K and adds N(0, (z S / K)^2).
A round that selects no party, or whose parties all fail, releases the
noise alone (:meth:`ClientLevelDP.keep`). Adding or removing one party
changes the sum by at most S (its weight is capped at 1), so the noise is
calibrated to that cap whatever the weights are. Weights are
w_i = min(1, n_i / n_mean) * t_i, with n_mean the mean party size fixed
before training (treated as public) and t_i in [0, 1] the strategy's trust
factor: 1 for FedAvg-style strategies, alpha_i / alpha_max for the adaptive
aggregator (alpha is clipped to alpha_max, which is the cap). A trust factor
must depend on the party's own data only: rules that compare a party with
the round's others (``loss``, ``similarity``, ``update_trust``, ``global_loss``) would let one
party move the others' weights, and are refused in client mode. The
accountant composes the Poisson-subsampled Gaussian mechanism over all
rounds at rate q, for add/remove-one-party neighbours: its RDP is Mironov,
Talwar and Zhang, "Renyi Differential Privacy of the Sampled Gaussian
Mechanism" (arXiv:1908.10530, 2019, Section 3.3), converted to (epsilon,
delta) by Balle et al. (AISTATS 2020, Theorem 21), as in McMahan et al.'s
Theorem 1 and Abadi et al.'s moments accountant. Opacus runs without
``secure_mode`` (a fast, non-cryptographic RNG): fine for experiments, not
for a deployment. Only the model update is protected: SCAFFOLD's control
variates and the adaptive aggregator's reported losses are not noised.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.accountants import RDPAccountant, create_accountant
from opacus.accountants.analysis import rdp as privacy_analysis
from opacus.accountants.utils import get_noise_multiplier
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from opacus.optimizers.optimizer_fast_gradient_clipping import DPOptimizerFastGradientClipping
from torch import nn
from torch.utils.data import DataLoader

from fedlight.client import ClientModule
from fedlight.config import DP_GRAD_SAMPLE_MODES as GRAD_SAMPLE_MODES
from fedlight.errors import ConfigError
from fedlight.state import ClientStateStore
from fedlight.strategies.base import PlainAverager

Params = dict[str, torch.Tensor]
ACCOUNTANTS = ("rdp", "prv")
# GRAD_SAMPLE_MODES: "ghost" is Opacus' ghost clipping (Li et al., "Large Language Models Can Be
# Strong Differentially Private Learners", ICLR 2022): per-sample gradient
# norms from activations and backprops, and the clipped gradient sum from the
# same quantities (book-keeping, see GhostClippedBackward), so no per-sample
# gradient of a dense layer is ever materialised. "hooks": Opacus' classic
# per-sample gradients.
_NOISE_STREAM = 0xD9

# Experiments run with Opacus' fast non-cryptographic RNG (documented above), and
# its per-sample hooks fire on the first layer, whose input needs no gradient:
# both warnings are expected, once per client fit.
warnings.filterwarnings("ignore", message="Secure RNG turned off")
warnings.filterwarnings("ignore", message="Full backward hook is firing")


def calibrate_noise(*, target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str) -> float:
    """The noise multiplier that spends ``target_epsilon`` after ``steps`` steps at ``sample_rate``."""
    try:
        with warnings.catch_warnings():
            # the search's "optimal order is the largest alpha" warnings precede its ValueError
            warnings.simplefilter("ignore", UserWarning)
            return float(get_noise_multiplier(
                target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate, steps=steps, accountant=accountant
            ))
    except ValueError:
        raise ConfigError(
            f"--dp-epsilon {target_epsilon} cannot be met with delta {delta} over {steps} steps at sampling rate "
            f"{sample_rate:.3g}; raise the target epsilon or lower the rounds"
        ) from None


@functools.lru_cache(maxsize=4096)
def _rdp_per_step(noise: float, sample_rate: float) -> np.ndarray:
    return privacy_analysis.compute_rdp(q=sample_rate, noise_multiplier=noise, steps=1, orders=RDPAccountant.DEFAULT_ALPHAS)


def epsilon_spent(history: Sequence[tuple[float, float, int]], *, delta: float, accountant: str) -> float:
    """Epsilon of an accountant history ``[(noise, sample_rate, steps), ...]``.

    For RDP this is Opacus' ``RDPAccountant.get_epsilon`` term for term (same
    orders, RDP linear in steps), with the per-step RDP of each (noise, rate)
    cached: parties share few sampling rates, and recomputing the 150-order
    RDP cost about 0.1 s per party per round.
    """
    if not history:
        return 0.0
    if accountant == "rdp":
        rdp = sum(_rdp_per_step(float(noise), float(rate)) * steps for noise, rate, steps in history)
        eps, _ = privacy_analysis.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)
        return float(eps)
    acc = create_accountant(mechanism=accountant)
    acc.history = list(history)
    return float(acc.get_epsilon(delta=delta))


class GhostClippedBackward:
    """Ghost clipping with book-keeping: sum_i c_i grad(loss_i) in ``.grad`` from one backward pass.

    Opacus' ``DPTensorFastGradientClipping`` runs two backward passes: one
    that gives its hooks each layer's activations and backprops (from which
    they compute per-sample gradient norms) and a second on the loss
    weighted by the clipping coefficients c_i = min(1, C / ||grad(loss_i)||).
    Following Bu et al., "Differentially Private Optimization on Large Model
    at Small Cost" (ICML 2023, book-keeping), the second pass is replaced by
    what it computes for each layer from the first pass's quantities:

    * ``nn.Linear`` (norms from activations a and backprops b, "ghost" norms):
      grad W = sum_i c_i b_i^T a_i, grad bias = sum_i c_i b_i;
    * layers whose per-sample gradients Opacus materialises (convolutions,
      normalisation layers): grad = sum_i c_i g_i.

    The backward pass stops at the inputs, so autograd computes no weight
    gradient at all. Parameters of any other layer get a second backward
    pass restricted to them. Measured on the LEAF CNN (batch 10, 2 threads): the
    backward part of a DP step took 27 ms with a second pass restricted to
    the weights and 21 ms with book-keeping (a plain step, forward, backward
    and update: 17-20 ms).
    """

    def __init__(self, hooks: Any, *, parameters: Sequence[torch.Tensor]):
        self.hooks = hooks
        self.parameters = list(parameters)
        self._linear: list[tuple[nn.Linear, torch.Tensor, torch.Tensor]] = []
        self._per_sample: dict[torch.Tensor, torch.Tensor] = {}
        # instance copies of Opacus' class-level sampler tables, wrapped to keep their inputs
        hooks.NORM_SAMPLERS = {t: self._keep_linear(fn) if t is nn.Linear else fn for t, fn in type(hooks).NORM_SAMPLERS.items()}
        hooks.GRAD_SAMPLERS = {t: self._keep_per_sample(fn) for t, fn in type(hooks).GRAD_SAMPLERS.items()}

    def _keep_linear(self, norm_sampler):
        def sampler(layer, activations, backprops):
            self._linear.append((layer, activations[0], backprops))
            return norm_sampler(layer, activations, backprops)
        return sampler

    def _keep_per_sample(self, grad_sampler):
        def sampler(layer, activations, backprops):
            samples = grad_sampler(layer, activations, backprops)
            for p, per_sample in samples.items():
                # a layer used twice in one forward pass contributes twice, as in Opacus
                self._per_sample[p] = self._per_sample[p] + per_sample if p in self._per_sample else per_sample
            return samples
        return sampler

    def __call__(self, per_sample_loss: torch.Tensor, inputs: torch.Tensor) -> None:
        self._linear, self._per_sample = [], {}
        try:
            # the graph is kept for the rare second pass; it is freed with the loss after the step
            torch.autograd.backward(per_sample_loss.mean(), inputs=[inputs], retain_graph=True)
            coefficients = self.hooks.get_clipping_coef()
            gradients: dict[torch.Tensor, torch.Tensor] = {}
            for layer, activations, backprops in self._linear:
                weighted = backprops * coefficients.view(-1, *([1] * (backprops.dim() - 1)))
                gradients[layer.weight] = torch.einsum("n...i,n...j->ij", weighted, activations)
                if layer.bias is not None:
                    gradients[layer.bias] = weighted.reshape(-1, weighted.shape[-1]).sum(0)
            for p, samples in self._per_sample.items():
                gradients[p] = torch.einsum("n...,n->...", samples, coefficients.to(samples.dtype))
        finally:
            self._linear, self._per_sample = [], {}
        rest = []
        for p in self.parameters:
            if p not in gradients:
                rest.append(p)
            elif p.grad is None:
                p.grad = gradients[p].view_as(p)
            else:
                p.grad.add_(gradients[p].view_as(p))
        if rest:
            self.hooks.disable_hooks()
            try:
                torch.autograd.backward((coefficients * per_sample_loss).sum(), inputs=rest)
            finally:
                self.hooks.enable_hooks()


class InPlaceNoiseOptimizer(DPOptimizerFastGradientClipping):
    """Opacus' ghost-clipping DP optimizer with its gradient bookkeeping done in place.

    The same step as the parent: grad = (sum_i c_i g_i + N(0, (noise * clip)^2)) / B,
    with the noise drawn from the same generator. The parent copies each
    gradient into ``summed_grad``, allocates a zero tensor and a noise tensor,
    adds them into a fourth and then divides; for the 6.6M-parameter LEAF
    CNN that was 35 ms of a 64 ms step on 2 cores (plain step: 18 ms). Here
    ``summed_grad`` is the gradient itself, the noise is drawn into one
    buffer per parameter kept for the whole fit, and the 1/B scale is
    folded into the noise's standard deviation and the add: 26 ms (22 of
    them the noise draw).

    The draw is one thread's work (``normal_`` with a generator is
    sequential), so a parameter of more than :data:`NOISE_CHUNK` entries is
    drawn in chunks of that size, each from its own generator seeded from
    the optimizer's at the fit's first step, on a pool of
    ``torch.get_num_threads()`` threads (the draw releases the GIL). The
    chunks, not the threads, fix the stream: any thread count gives the
    same noise. Smaller parameters draw from the optimizer's generator, in
    order, as before.

    ``summed_grad`` aliases ``.grad``, which is only sound while every
    backward pass is followed by a step; Opacus skips steps only for
    virtual batches (``BatchMemoryManager``), which fedlight does not use,
    so :meth:`signal_skip_step` refuses. :meth:`zero_grad` always sets the
    gradients to None: zeroing in place (Lightning's call) would let the next
    backward pass accumulate into the noise buffer, which the next draw
    overwrites.
    """

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none=True)

    def accumulate(self) -> None:
        for p in self.params:
            if p.summed_grad is None:
                p.summed_grad = p.grad.detach()
            else:
                p.summed_grad.add_(p.grad.detach())

    def signal_skip_step(self, do_skip: bool = True) -> None:
        raise NotImplementedError("fedlight's DP optimizer does not support virtual steps (BatchMemoryManager)")

    def add_noise(self) -> None:
        std = getattr(self, "_adjusted_noise_multiplier", self.noise_multiplier) * self.max_grad_norm
        scale = 1.0 / (self.expected_batch_size * self.accumulated_iterations) if self.loss_reduction == "mean" else 1.0
        # set here, not in __init__: private_fit turns Opacus' own optimizer into this class
        buffers = self.__dict__.setdefault("_noise_buffers", {})
        chunked = self.__dict__.setdefault("_noise_chunks", {})
        pending = []
        for p in self.params:
            _check_processed_flag(p.summed_grad)
            buffer = buffers.get(id(p))
            if buffer is None:
                buffer = buffers[id(p)] = torch.empty_like(p.summed_grad)
                if buffer.numel() > NOISE_CHUNK:
                    chunked[id(p)] = [(chunk, _child_generator(self.generator)) for chunk in buffer.view(-1).split(NOISE_CHUNK)]
            if std > 0 and id(p) in chunked:
                pending.extend(_draw_async(chunk, std * scale, generator) for chunk, generator in chunked[id(p)])
            elif std > 0:
                buffer.normal_(0.0, std * scale, generator=self.generator)
        for draw in pending:
            draw.result()
        for p in self.params:
            buffer = buffers[id(p)]
            if std > 0:
                buffer.add_(p.summed_grad, alpha=scale)
            else:
                torch.mul(p.summed_grad, scale, out=buffer)
            p.grad = buffer.view_as(p)
            _mark_as_processed(p.summed_grad)

    def scale_grad(self) -> None:
        """Folded into :meth:`add_noise`."""


# Entries per noise chunk of a large parameter (InPlaceNoiseOptimizer): the LEAF CNN's 6.4M-entry dense
# layer is 7 chunks, and the built-ins' other parameters stay below it.
NOISE_CHUNK = 1 << 20


def _child_generator(parent: torch.Generator) -> torch.Generator:
    """A generator seeded from ``parent``'s stream (one draw)."""
    return torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=parent)))


@functools.cache
def _noise_pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fedlight-noise")


def _draw_async(chunk: torch.Tensor, std: float, generator: torch.Generator) -> Future:
    """``chunk.normal_(0, std)`` from ``generator`` on the noise pool (in this thread when torch has one thread)."""
    threads = torch.get_num_threads()
    if threads == 1:
        done: Future = Future()
        done.set_result(chunk.normal_(0.0, std, generator=generator))
        return done
    return _noise_pool(threads).submit(chunk.normal_, 0.0, std, generator=generator)


@dataclass(frozen=True)
class DPSGDSettings:
    """What a DP-SGD client task needs besides its own noise multiplier and accountant (picklable)."""

    clip: float
    delta: float
    accountant: str = "rdp"
    grad_sample_mode: str = "ghost"
    seed: int = 0


@contextmanager
def dp_sgd_fit(
    module: ClientModule,
    loader: DataLoader,
    *,
    settings: DPSGDSettings,
    noise_multiplier: float,
    accountant_state: dict[str, Any] | None,
    server_round: int,
    client_id: int,
    updates: dict[str, Any],
) -> Iterator[DataLoader]:
    """Make ``module``'s next fit DP-SGD; yields the Poisson-sampled loader to fit on.

    The party's accountant starts from ``accountant_state`` (None on its
    first fit); its new state and the epsilon spent go into ``updates``
    (``dp_accountant``, ``dp_epsilon``), even when the fit fails: steps taken
    are privacy spent.
    """
    engine = PrivacyEngine(accountant=settings.accountant)
    if accountant_state is not None:
        engine.accountant.load_state_dict(accountant_state)
    # the party's batch shuffling is seeded with [seed, round, client]; the noise gets its own stream
    noise_seed = np.random.SeedSequence([settings.seed, server_round, client_id, _NOISE_STREAM]).generate_state(1)[0]
    private = engine.make_private(
        module=module.model,
        optimizer=module.configure_optimizers(),
        data_loader=loader,
        noise_multiplier=noise_multiplier,
        max_grad_norm=settings.clip,
        wrap_model=False,
        grad_sample_mode=settings.grad_sample_mode,
        criterion=torch.nn.CrossEntropyLoss(),
        noise_generator=torch.Generator().manual_seed(int(noise_seed)),
    )
    if settings.grad_sample_mode == "ghost":
        hooks, optimizer, _criterion, dp_loader = private
        # Opacus picks the optimizer class inside make_private; only the noise step changes
        if type(optimizer) is DPOptimizerFastGradientClipping and not optimizer.secure_mode:
            optimizer.__class__ = InPlaceNoiseOptimizer
        parameters = [p for p in module.model.parameters() if p.requires_grad]
        module.per_sample_backward = GhostClippedBackward(hooks, parameters=parameters)
    else:
        hooks, optimizer, dp_loader = private
    account = optimizer.step_hook

    def after_noise(opt) -> None:
        account(opt)
        module.apply_gradient_edits()

    optimizer.attach_step_hook(after_noise)
    module.use_optimizer(optimizer)
    module.edit_gradients_after_noise = True
    try:
        yield dp_loader
    finally:
        module.per_sample_backward = None
        hooks.cleanup()
        for p in module.model.parameters():
            p.grad_sample = None
        updates["dp_accountant"] = engine.accountant.state_dict()
        updates["dp_epsilon"] = epsilon_spent(engine.accountant.history, delta=settings.delta,
                                              accountant=settings.accountant)


class SampleLevelDP:
    """DP-SGD around each client's local fit (see the module docstring).

    The driver's side: each party's noise multiplier (:meth:`calibrate`),
    the accountants' states in the store, the epsilon summaries. The fit
    itself is :func:`dp_sgd_fit`, run inside the client's task.
    """

    def __init__(
        self,
        *,
        store: ClientStateStore,
        clip: float,
        delta: float,
        accountant: str = "rdp",
        noise: float | None = None,
        target_epsilon: float | None = None,
        seed: int = 0,
        grad_sample_mode: str = "ghost",
    ):
        if (noise is None) == (target_epsilon is None):
            raise ConfigError("sample-level DP needs exactly one of --dp-noise and --dp-epsilon")
        if grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise ConfigError(f"--dp-grad-sample-mode {grad_sample_mode!r}: choose from {', '.join(GRAD_SAMPLE_MODES)}")
        self.grad_sample_mode = grad_sample_mode
        self.store = store
        self.clip = clip
        self.delta = delta
        self.accountant = accountant
        self.noise = noise
        self.target_epsilon = target_epsilon
        self.seed = seed
        self._noise_by_client: dict[int, float] = {}
        self._round_epsilons: dict[int, float] = {}

    def calibrate(self, *, batches_per_epoch: Sequence[int], local_epochs: int, rounds: int,
                  local_steps: int | None = None) -> None:
        """Fix each party's noise multiplier before training (once; kept across restores).

        A round is ``local_steps`` steps when set, else ``local_epochs`` epochs of the party's batches.
        """
        if self.target_epsilon is None:
            self._noise_by_client = {cid: float(self.noise) for cid in range(len(batches_per_epoch))}
            return
        cache: dict[int, float] = {}
        for cid, batches in enumerate(batches_per_epoch):
            if batches not in cache:
                cache[batches] = calibrate_noise(
                    target_epsilon=self.target_epsilon, delta=self.delta, sample_rate=1.0 / batches,
                    steps=rounds * (local_steps or local_epochs * batches), accountant=self.accountant,
                )
            self._noise_by_client[cid] = cache[batches]

    def noise_for(self, client_id: int) -> float:
        return self._noise_by_client[client_id]

    # the party's stored values a DP-SGD task reads (loaded by the driver into ClientTask.client_state)
    state_keys = ("dp_accountant",)

    @property
    def settings(self) -> DPSGDSettings:
        return DPSGDSettings(clip=self.clip, delta=self.delta, accountant=self.accountant,
                             grad_sample_mode=self.grad_sample_mode, seed=self.seed)

    def record(self, client_id: int, updates: dict[str, Any]) -> None:
        """Note a task's spent epsilon for this round's metrics (the driver stores the updates)."""
        if "dp_epsilon" in updates:
            self._round_epsilons[client_id] = updates["dp_epsilon"]

    def epsilon_max(self) -> float:
        return max((eps for _, eps in self.store.items("dp_epsilon")), default=0.0)

    def round_metrics(self) -> dict[str, float]:
        metrics = {f"dp_epsilon/{cid}": eps for cid, eps in self._round_epsilons.items()}
        metrics["dp_epsilon_max"] = self.epsilon_max()
        self._round_epsilons = {}
        return metrics

    def summary(self) -> dict[str, Any]:
        noises = list(self._noise_by_client.values())
        spent = sorted(eps for _, eps in self.store.items("dp_epsilon"))
        return {
            "mode": "sample",
            "epsilon_max": self.epsilon_max(),
            "epsilon_median": spent[len(spent) // 2] if spent else 0.0,
            "parties_trained": len(spent),
            "delta": self.delta,
            "noise": max(noises) if noises else self.noise,
            "noise_min": min(noises) if noises else self.noise,
            "clip": self.clip,
            "accountant": self.accountant,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"noise_by_client": dict(self._noise_by_client)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._noise_by_client = {int(k): float(v) for k, v in state["noise_by_client"].items()}


def clip_update(update: Params, max_norm: float) -> Params:
    """Scale ``update`` so that its global L2 norm is at most ``max_norm``."""
    norm = math.sqrt(sum(float(v.double().pow(2).sum()) for v in update.values()))
    scale = min(1.0, max_norm / (norm + 1e-12))
    return {k: v * scale for k, v in update.items()}


class ClientLevelDP(PlainAverager):
    """DP-FedAvg's clipped, fixed-denominator, noised average (see the module docstring)."""

    def __init__(
        self,
        *,
        clip: float,
        delta: float,
        clients_per_round: int,
        num_clients: int,
        mean_client_size: float,
        rounds: int,
        accountant: str = "rdp",
        noise: float | None = None,
        target_epsilon: float | None = None,
        seed: int = 0,
    ):
        if (noise is None) == (target_epsilon is None):
            raise ConfigError("client-level DP needs exactly one of --dp-noise and --dp-epsilon")
        self.clip = clip
        self.delta = delta
        self.clients_per_round = clients_per_round
        self.sample_rate = clients_per_round / num_clients
        self.mean_client_size = mean_client_size
        self.accountant = accountant
        self.noise = noise if noise is not None else calibrate_noise(
            target_epsilon=target_epsilon, delta=delta, sample_rate=self.sample_rate, steps=rounds, accountant=accountant
        )
        self.target_epsilon = target_epsilon
        self.history: list[tuple[float, float, int]] = []
        self._generator = torch.Generator().manual_seed(seed + 7)

    def average(self, results, global_params: Params, trust: torch.Tensor | None = None) -> Params:
        """(sum_i w_i clip(theta_i - theta) + N(0, (z S)^2)) / K added to theta; with no results, the noise alone."""
        keys = [k for k, v in global_params.items() if torch.is_floating_point(v)]
        total = {k: torch.zeros_like(global_params[k]) for k in keys}
        for i, result in enumerate(results):
            weight = min(1.0, result.num_samples / self.mean_client_size)
            if trust is not None:
                weight *= float(trust[i].clamp(0.0, 1.0))
            update = clip_update({k: result.params[k] - global_params[k] for k in keys}, self.clip)
            for k in keys:
                total[k].add_(update[k], alpha=weight)
        std = self.noise * self.clip / self.clients_per_round
        new = dict(global_params)
        for k in keys:
            noise = torch.normal(0.0, std, size=total[k].shape, generator=self._generator)
            new[k] = global_params[k] + total[k] / self.clients_per_round + noise.to(total[k].dtype)
        self._record_round()
        return new

    def keep(self, global_params: Params) -> Params:
        """A round without usable results still releases the mechanism's output: theta + N(0, (z S / K)^2).

        Keeping theta unchanged would tell an observer that the round selected
        nobody, an event whose probability depends on how many parties there
        are, which the accountant does not charge for.
        """
        return self.average([], global_params)

    def _record_round(self) -> None:
        if self.history and self.history[-1][:2] == (self.noise, self.sample_rate):
            self.history[-1] = (self.noise, self.sample_rate, self.history[-1][2] + 1)
        else:
            self.history.append((self.noise, self.sample_rate, 1))

    def epsilon(self) -> float:
        return epsilon_spent(self.history, delta=self.delta, accountant=self.accountant)

    def round_metrics(self) -> dict[str, float]:
        return {"dp_epsilon_max": self.epsilon()}

    def summary(self) -> dict[str, Any]:
        return {"mode": "client", "epsilon_max": self.epsilon(), "delta": self.delta, "noise": self.noise,
                "clip": self.clip, "accountant": self.accountant, "sample_rate": self.sample_rate,
                "client_sampling": "poisson"}

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history), "generator": self._generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [tuple(h) for h in state["history"]]
        self._generator.set_state(state["generator"])
