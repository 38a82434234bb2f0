"""Trust scores and weights for the adaptive aggregator (pure tensor functions).

A rule maps one round's client results to scores s_i in [0, 1]; the
aggregator folds them into per-party trust weights alpha_i by an exponential
moving average. Adding a rule is one function and one line in
:data:`ALPHA_RULES`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from fedlight.strategies.aggregation import flatten
from fedlight.strategies.base import ClientResult, Params
from fedlight.strategies.robust import coordinate_median


def _excess_scores(excess: torch.Tensor, temperature: float, tolerance: float) -> torch.Tensor:
    """exp(-max(0, excess - tolerance) / T): the shape every excess-based rule shares."""
    return torch.exp(-torch.clamp(excess - tolerance, min=0.0) / temperature)


def relative_loss_scores(losses: torch.Tensor, temperature: float) -> torch.Tensor:
    """exp(-(L_i - min_j L_j) / T): the lowest loss scores 1, higher losses decay."""
    return torch.exp(-(losses - losses.min()) / temperature)


def excess_loss_scores(losses: torch.Tensor, temperature: float, tolerance: float = 0.0) -> torch.Tensor:
    """exp(-max(0, L_i / median(L) - 1 - tolerance) / T).

    Parties up to (1 + tolerance) times the round's median loss score 1; above
    that the score decays with temperature T. Ratios to the median are
    scale-free, so the rule behaves the same early (all losses near log C)
    and late in training. The tolerance spares clean parties with harder
    handwriting, which measured up to 1.5x the median on FEMNIST, while
    parties with 80% wrong labels measured 2.5-3.3x once the model learned.
    """
    median = losses.median().clamp_min(1e-12)
    return _excess_scores(losses / median - 1.0, temperature, tolerance)


def label_surprise_scores(cross_entropy: torch.Tensor, entropy: torch.Tensor, temperature: float, tolerance: float = 0.0) -> torch.Tensor:
    """exp(-max(0, (CE_i - H_i) - tolerance) / T).

    CE_i is the global model's cross-entropy on party i's labels and H_i the
    mean entropy of its predictions on the same inputs: CE - H measures how
    much more the party's labels surprise the model than the model expects
    to be surprised. It needs no reference party and no round statistics.
    On FEMNIST, clean parties measured CE - H <= 0.05 (the 90th percentile)
    in every phase of training, since a federated model is under- rather
    than over-confident, and hard but clean handwriting raises H as well as
    CE. Parties with 80% wrong labels measured a median of +0.6 (shifted
    labels) to +1.2 (random labels) from round 30 on, and random labels
    showed from the first rounds.
    """
    return _excess_scores(cross_entropy - entropy, temperature, tolerance)


def label_fit_scores(
    cross_entropy: torch.Tensor, entropy: torch.Tensor, correct: torch.Tensor, expected_correct: torch.Tensor,
    temperature: float, tolerance: float = 0.0,
) -> torch.Tensor:
    """exp(-max(0, max(CE_i - H_i, log((E_i + 1) / (A_i + 1))) - tolerance) / T).

    Two ways, both in nats, in which a party's labels can fit the global
    model worse than the model itself expects: the label surprise CE_i - H_i
    (:func:`label_surprise_scores`), and the agreement shortfall
    log(E_i / A_i), where A_i counts the party's labels that match the
    model's top class and E_i is the count the model expects (the sum of its
    top-class probabilities). The +1 keeps a party with no agreement finite.
    The larger shortfall sets the score. On FEMNIST (seed 0), parties with
    80% shifted labels agreed 0.59-0.73 times as often as expected in rounds
    21-30 (medians), while their label surprise was still about 0; clean
    parties' 5th percentile was 0.95-1.24 from round 21 on, as the federated
    model is underconfident. It lowered the shifted parties' weight in
    rounds 21-30 but not the final accuracy (README, noisy-parties results).
    """
    agreement_shortfall = torch.log((expected_correct + 1.0) / (correct + 1.0))
    return _excess_scores(torch.maximum(cross_entropy - entropy, agreement_shortfall), temperature, tolerance)


def median_cosine_scores(updates: torch.Tensor) -> torch.Tensor:
    """max(0, cos(u_i, coordinate-wise median of the updates)) for rows u_i."""
    reference = updates.median(dim=0).values
    return torch.clamp(torch.nn.functional.cosine_similarity(updates, reference.unsqueeze(0), dim=1), min=0.0)


# Rows above this multiple of the majority core's upper median norm stay out of update_trust's reference.
NORM_OUTLIER_FACTOR = 3.0


def majority_core(updates: torch.Tensor) -> torch.Tensor:
    """Indices of the n // 2 + 1 rows with the smallest sum of distances to their n // 2 nearest other rows.

    A Krum-style score (Blanchard et al., NeurIPS 2017) with f = n - n // 2 - 1, the most a strict majority
    allows: honest updates lie near each other and independent noise far from everything, so the core holds
    honest rows even in a round that draws most of its parties from noise senders. Identical updates sent
    by colluding parties lie at distance 0 from each other and can fill the core.
    """
    n = updates.shape[0]
    if n < 3:
        return torch.arange(n)
    distances = torch.cdist(updates.double().unsqueeze(0), updates.double().unsqueeze(0)).squeeze(0)
    nearest = distances.sort(dim=1).values[:, 1 : n // 2 + 1]  # column 0: the row itself
    return nearest.sum(dim=1).argsort(stable=True)[: n // 2 + 1].sort().values


def norm_screened_rows(updates: torch.Tensor, factor: float = NORM_OUTLIER_FACTOR) -> torch.Tensor:
    """Indices of the rows whose norm is at most ``factor`` times the upper median norm of the :func:`majority_core`.

    The core sets the scale, so a majority of large updates (Gaussian noise) does not; colluding identical
    updates with a small norm (IPM, sign flip) may fill up to half the core (3 of its 6 rows in a round of
    10), and its upper median is then still an honest row's norm. 3: the updates of parties that took a
    few times more local steps than the core's stay, while Gaussian noise of std 1 over a model's hundreds
    of thousands of coordinates lies far above.
    """
    norms = updates.norm(dim=1)
    core = norms[majority_core(updates)].sort().values
    scale = core[core.numel() // 2]
    return torch.nonzero(norms <= factor * scale).flatten()


def trust_reference(updates: torch.Tensor) -> torch.Tensor:
    """The coordinate-wise median of the :func:`norm_screened_rows` updates: update_trust's reference."""
    return coordinate_median(updates[norm_screened_rows(updates)])


def median_trust_scores(updates: torch.Tensor) -> torch.Tensor:
    """max(0, cos(u_i, m)) * min(1, ||m|| / ||u_i||), with m the :func:`trust_reference`.

    FLTrust's trust score and norm bound (Cao et al., "FLTrust: Byzantine-robust
    Federated Learning via Trust Bootstrapping", NDSS 2021) as one weight, with
    the round's median update as the reference in place of FLTrust's server
    data set. The cosine alone lets a party with a huge update in almost any
    direction (Gaussian noise, an update scaled x10) keep a weight that its
    norm multiplies; the norm factor caps what weight x norm a party adds to
    the median's norm times its cosine. The median is over the rows up to 3x
    the majority core's norm scale: with most of a round's updates Gaussian
    noise, the plain median is noise. The core's own median instead would let
    colluding identical updates (sign flip, IPM), which sit at distance 0
    from each other, take the reference over from 3 of 10.
    """
    reference = trust_reference(updates)
    cosine = torch.clamp(torch.nn.functional.cosine_similarity(updates, reference.unsqueeze(0), dim=1), min=0.0)
    norms = updates.norm(dim=1)
    bound = torch.where(norms > 0, reference.norm() / norms.clamp_min(1e-30), torch.ones_like(norms))
    return cosine * torch.clamp(bound, max=1.0)


def ema_alpha(alpha: torch.Tensor, score: torch.Tensor, momentum: float, alpha_min: float, alpha_max: float) -> torch.Tensor:
    """alpha <- clip((1 - m) * alpha + m * s, alpha_min, alpha_max)."""
    return torch.clamp((1.0 - momentum) * alpha + momentum * score, alpha_min, alpha_max)


# --- rules: (results, global params, temperature, tolerance) -> scores ------


def _uniform(results: Sequence[ClientResult], global_params: Params, temperature: float, tolerance: float) -> torch.Tensor:
    return torch.ones(len(results), dtype=torch.float64)


def _validation_loss(results: Sequence[ClientResult], global_params: Params, temperature: float, tolerance: float) -> torch.Tensor:
    losses = torch.tensor([r.val_loss if r.val_loss is not None else float("nan") for r in results], dtype=torch.float64)
    # a party without a validation split gets the round's median loss
    losses = torch.where(torch.isnan(losses), losses.nanmedian(), losses)
    return relative_loss_scores(losses, temperature)


def _updates(results: Sequence[ClientResult], global_params: Params) -> torch.Tensor:
    """The round's updates theta_i - theta_global, one flattened row per result."""
    keys = [k for k, v in global_params.items() if torch.is_floating_point(v)]
    return torch.stack([flatten({k: r.params[k] - global_params[k] for k in keys}) for r in results])


def _similarity(results: Sequence[ClientResult], global_params: Params, temperature: float, tolerance: float) -> torch.Tensor:
    return median_cosine_scores(_updates(results, global_params)).double()


def _update_trust(results: Sequence[ClientResult], global_params: Params, temperature: float, tolerance: float) -> torch.Tensor:
    return median_trust_scores(_updates(results, global_params)).double()


def _reported(results: Sequence[ClientResult], key: str) -> torch.Tensor:
    """One value the clients sent back (``extras[key]``), as a float64 vector over the round's results."""
    return torch.tensor([r.extras[key] for r in results], dtype=torch.float64)


def _global_loss(results: Sequence[ClientResult], global_params: Params, temperature: float, tolerance: float) -> torch.Tensor:
    return excess_loss_scores(_reported(results, "pre_train_loss"), temperature, tolerance)


def _quality(results: Sequence[ClientResult], global_params: Params, temperature: float, tolerance: float) -> torch.Tensor:
    return label_surprise_scores(
        _reported(results, "pre_train_loss"), _reported(results, "pre_train_entropy"), temperature, tolerance
    )


def _label_fit(results: Sequence[ClientResult], global_params: Params, temperature: float, tolerance: float) -> torch.Tensor:
    counts = torch.tensor([r.num_samples for r in results], dtype=torch.float64)
    return label_fit_scores(
        _reported(results, "pre_train_loss"), _reported(results, "pre_train_entropy"),
        _reported(results, "pre_train_accuracy") * counts, _reported(results, "pre_train_confidence") * counts,
        temperature, tolerance,
    )


@dataclass(frozen=True)
class AlphaRule:
    """A scoring rule; ``needs_pre_train_loss`` asks clients to run the global-loss probe.

    ``compares_parties``: a party's score depends on the round's other
    parties (a median, a minimum), so one party moves the others' weights;
    client-level DP's sensitivity bound does not hold for such rules.
    """

    name: str
    score: Callable[[Sequence[ClientResult], Params, float, float], torch.Tensor]
    needs_pre_train_loss: bool = False
    compares_parties: bool = False
    doc: str = ""


ALPHA_RULES: dict[str, AlphaRule] = {
    rule.name: rule
    for rule in (
        AlphaRule("uniform", _uniform, doc="s_i = 1 (reduces to FedAvg)"),
        AlphaRule("loss", _validation_loss, compares_parties=True, doc="local validation loss after training, relative to the round's lowest"),
        AlphaRule("similarity", _similarity, compares_parties=True, doc="cosine of the update with the coordinate-wise median update, floored at 0"),
        AlphaRule("update_trust", _update_trust, compares_parties=True,
                  doc="cosine with the median update floored at 0, times min(1, median's norm / the update's norm) (FLTrust)"),
        AlphaRule("global_loss", _global_loss, needs_pre_train_loss=True, compares_parties=True,
                  doc="global model's loss on the party's data before training, relative to the round's median, with a tolerance"),
        AlphaRule("quality", _quality, needs_pre_train_loss=True,
                  doc="label surprise: global model's loss on the party's labels minus its predictive entropy, before training"),
        AlphaRule("label_fit", _label_fit, needs_pre_train_loss=True,
                  doc="label surprise or agreement shortfall (top-class matches against the model's confidence), whichever is larger"),
    )
}
