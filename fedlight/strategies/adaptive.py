"""The adaptive trust-weighted aggregator (fedlight's own method).

Following the preprint "Scalable Multi-Party Collaborative Data Mining Based
on Federated Learning" (2025): FedAvg-style aggregation weighted by data size
and a per-party trust weight,

    theta = sum_i alpha_i |D_i| theta_i / sum_i alpha_i |D_i|.

alpha_i starts at 1 and, each round party i takes part, moves as
alpha_i <- clip((1 - m) alpha_i + m s_i, alpha_min, alpha_max), where the
score s_i in [0, 1] comes from a rule in :data:`~fedlight.strategies.trust.ALPHA_RULES`:
``uniform`` (FedAvg), ``loss`` (local validation loss), ``similarity``
(cosine with the median update), ``update_trust`` (FLTrust's score: the
cosine with the median of the updates up to 3x the lower median norm, times
a bound on the update's norm by that median's), ``global_loss`` (the global model's loss on
the party's data before local training, relative to the round's median) or
``quality``, the default: the party's *label surprise* CE_i - H_i, the
global model's cross-entropy on the party's labels minus the entropy of its
own predictions on the same inputs, s_i = exp(-max(0, CE_i - H_i - tol) / T).
It needs no labels at the server and no reference party, and it separates
mislabelled parties from clean parties with hard handwriting, whose
predictions are uncertain too (measured on FEMNIST; see
:func:`~fedlight.strategies.trust.label_surprise_scores`). ``label_fit``
also scores how much less often the party's labels match the model's top
class than the model's confidence expects, and takes the larger of the two
shortfalls (:func:`~fedlight.strategies.trust.label_fit_scores`). The
updated alpha is used in the same round's aggregate.

Hyperparameters: ``alpha_rule`` ("quality"), ``alpha_momentum`` m (1),
``alpha_min`` (0), ``alpha_max`` (1; also the cap that client-level DP
calibrates its noise to), ``alpha_temperature`` T (0.5) and
``alpha_tolerance`` tol (0.1 nats): a party whose labels surprise the model
0.6 nats more than its predictions do scores e^-1, one at 2.1 nats e^-4
(mislabelled FEMNIST parties measured 2-9 nats from round 40 on, clean
parties 0.05 or less at the 90th percentile).

Why m = 1: when 10 of 300 parties are sampled, a party takes part in
about 3 of 100 rounds and alpha starts at 1, so with m < 1 a party would
keep at least 1 - m of full trust on its first visit however badly it
scores; a momentum below 1 suits federations where each party takes part
in most rounds. Why tol = 0.1: it spares clean parties whose labels
surprise the model slightly. How both were measured:
``docs/results/adaptive_rules.md``.

``global_loss`` reads the tolerance as the loss ratio to the median above 1
that goes unpenalised (it was the default with T = 0.25 and tol = 0.5);
``loss`` uses the temperature.
alpha_i is kept per client id in the state store.
"""

from __future__ import annotations

import torch

from fedlight.callbacks import GlobalLossProbe
from fedlight.strategies.base import ClientFailure, ClientPlan, ClientResult, Params, Strategy
from fedlight.strategies.trust import ALPHA_RULES, ema_alpha


class AdaptiveTrust(Strategy):
    name = "adaptive"

    def __init__(
        self,
        alpha_rule: str = "quality",
        alpha_momentum: float = 1.0,
        alpha_min: float = 0.0,
        alpha_max: float = 1.0,
        alpha_temperature: float = 0.5,
        alpha_tolerance: float = 0.1,
    ):
        if alpha_rule not in ALPHA_RULES:
            raise ValueError(f"unknown alpha rule {alpha_rule!r}; choose from {', '.join(ALPHA_RULES)}")
        if not 0 < alpha_momentum <= 1:
            raise ValueError(f"alpha_momentum must be in (0, 1], got {alpha_momentum}")
        if not 0 <= alpha_min <= alpha_max or alpha_max <= 0:
            raise ValueError(f"need 0 <= alpha_min <= alpha_max and alpha_max > 0, got {alpha_min}, {alpha_max}")
        if alpha_temperature <= 0:
            raise ValueError(f"alpha_temperature must be positive, got {alpha_temperature}")
        if alpha_tolerance < 0:
            raise ValueError(f"alpha_tolerance must be non-negative, got {alpha_tolerance}")
        self.tolerance = alpha_tolerance
        self.rule = ALPHA_RULES[alpha_rule]
        self.momentum = alpha_momentum
        self.alpha_min = alpha_min
        self.alpha_max = alpha_max
        self.temperature = alpha_temperature
        self._round_alphas: dict[int, float] = {}

    def alpha(self, client_id: int) -> float:
        return float(self.store.get(client_id, "alpha", min(max(1.0, self.alpha_min), self.alpha_max)))

    def configure_round(self, server_round: int, client_ids: list[int], global_params: Params) -> list[ClientPlan]:
        callbacks = (lambda: [GlobalLossProbe()]) if self.rule.needs_pre_train_loss else list
        return [ClientPlan(client_id=c, callbacks=callbacks()) for c in client_ids]

    def aggregate(
        self, server_round: int, global_params: Params, results: list[ClientResult], failures: list[ClientFailure]
    ) -> Params:
        self._round_alphas = {}
        if not results:
            return self.keep(global_params)
        scores = self.rule.score(results, global_params, self.temperature, self.tolerance)
        previous = torch.tensor([self.alpha(r.client_id) for r in results], dtype=torch.float64)
        alphas = ema_alpha(previous, scores, self.momentum, self.alpha_min, self.alpha_max)
        for result, alpha in zip(results, alphas.tolist()):
            self.store.put(result.client_id, "alpha", alpha)
            self._round_alphas[result.client_id] = alpha
        # alpha_i |D_i| up to the constant alpha_max, which normalisation removes
        # and which caps the trust factor at 1 for client-level DP.
        return self.average(results, global_params, trust=alphas / self.alpha_max)

    def round_metrics(self) -> dict[str, float]:
        metrics = {f"alpha/{cid}": a for cid, a in self._round_alphas.items()}
        if self._round_alphas:
            metrics["alpha_round_mean"] = sum(self._round_alphas.values()) / len(self._round_alphas)
        return metrics
