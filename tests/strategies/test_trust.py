import math

import torch

from fedlight.strategies.trust import (
    ALPHA_RULES,
    ema_alpha,
    excess_loss_scores,
    label_fit_scores,
    label_surprise_scores,
    median_cosine_scores,
    majority_core,
    median_trust_scores,
    relative_loss_scores,
)


def test_excess_loss_scores_hand_computed():
    scores = excess_loss_scores(torch.tensor([1.0, 1.0, 2.0, 4.0], dtype=torch.float64), temperature=1.0)
    # lower median is 1: ratios 1, 1, 2, 4 -> exp(0), exp(0), exp(-1), exp(-3)
    assert torch.allclose(scores, torch.tensor([1.0, 1.0, math.exp(-1), math.exp(-3)], dtype=torch.float64))


def test_excess_loss_tolerance_spares_moderate_losses():
    losses = torch.tensor([1.0, 1.0, 1.0, 1.4, 2.0, 3.0], dtype=torch.float64)
    scores = excess_loss_scores(losses, temperature=0.25, tolerance=0.5)
    # lower median 1: ratios 1, 1, 1, 1.4, 2, 3 -> excess over 1.5: 0, 0, 0, 0, 0.5, 1.5
    assert torch.allclose(scores, torch.tensor([1, 1, 1, 1, math.exp(-2), math.exp(-6)], dtype=torch.float64))


def test_label_surprise_scores_hand_computed():
    cross_entropy = torch.tensor([2.0, 2.0, 3.0], dtype=torch.float64)
    entropy = torch.tensor([2.5, 1.5, 1.0], dtype=torch.float64)
    # CE - H = -0.5, 0.5, 2.0; excess over tolerance 0.5: 0, 0, 1.5; T = 0.5
    scores = label_surprise_scores(cross_entropy, entropy, temperature=0.5, tolerance=0.5)
    assert torch.allclose(scores, torch.tensor([1.0, 1.0, math.exp(-3)], dtype=torch.float64))


def test_label_fit_scores_take_the_larger_shortfall():
    cross_entropy = torch.tensor([2.0, 2.0, 3.0, 2.0], dtype=torch.float64)
    entropy = torch.tensor([2.5, 1.5, 1.0, 2.5], dtype=torch.float64)  # CE - H = -0.5, 0.5, 2.0, -0.5
    correct = torch.tensor([9.0, 9.0, 9.0, 0.0], dtype=torch.float64)
    expected = torch.tensor([4.0, 9.0, 9.0, 2.0], dtype=torch.float64)
    # log((E + 1) / (A + 1)) = log(0.5), 0, 0, log(3); the larger of the two, less tolerance 0.25:
    # -0.75 -> 0, 0.25, 1.75, log(3) - 0.25; T = 0.5
    scores = label_fit_scores(cross_entropy, entropy, correct, expected, temperature=0.5, tolerance=0.25)
    want = [1.0, math.exp(-0.5), math.exp(-3.5), math.exp(-2 * (math.log(3) - 0.25))]
    assert torch.allclose(scores, torch.tensor(want, dtype=torch.float64))


def test_relative_loss_scores_hand_computed():
    scores = relative_loss_scores(torch.tensor([0.5, 1.5], dtype=torch.float64), temperature=0.5)
    assert torch.allclose(scores, torch.tensor([1.0, math.exp(-2)], dtype=torch.float64))


def test_median_cosine_scores_floor_at_zero():
    updates = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    # coordinate-wise median [1, 0]: cosines 1, 1 and -1, floored to 0
    scores = median_cosine_scores(updates)
    assert torch.allclose(scores, torch.tensor([1.0, 1.0, 0.0]))


FIVE_UPDATES = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 4.0], [-1.0, 0.0], [20.0, 0.0]])


def test_majority_core_hand_computed():
    # distances: ab 1, ad 2, bd 3, bc sqrt(17) = 4.12, ac sqrt(20) = 4.47, cd sqrt(32), ce sqrt(305), be 18, ae 19, de 21;
    # sums over the n // 2 = 2 nearest: a 1 + 2 = 3, b 1 + 3 = 4, c 4.12 + 4.47, d 2 + 3 = 5, e 17.46 + 18: keep 3
    assert majority_core(FIVE_UPDATES).tolist() == [0, 1, 3]
    assert majority_core(FIVE_UPDATES[:2]).tolist() == [0, 1]


def test_median_trust_scores_bound_the_norm():
    # the core's coordinate-wise median: median of [1, 2, -1] and of [0, 0, 0], [1, 0], norm 1.
    # Cosines 1, 1, 3/5, -1 -> 0, 1; norm factors min(1, 1/1) = 1, 1/2, 1/5, 1/1, 1/20.
    scores = median_trust_scores(FIVE_UPDATES)
    assert torch.allclose(scores, torch.tensor([1.0, 0.5, 0.6 * 0.2, 0.0, 0.05]))
    # a party scaled x20 adds what the reference adds: weight x norm 0.05 x 20 = 1
    assert torch.isclose(scores[4] * FIVE_UPDATES[4].norm(), FIVE_UPDATES[0].norm())


def test_median_trust_scores_hold_when_half_the_round_attacks():
    updates = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-9.0, -9.0], [-10.0, -10.0]])
    # the plain (lower) median of the four is [-9, -9], an attacker's update, which would trust the attackers.
    # Sums over the 2 nearest: honest 0 + sqrt(181) = 13.45 each, [-9, -9] sqrt(2) + 13.45, [-10, -10] sqrt(2) + sqrt(221):
    # the core is both honest rows and [-9, -9]; its median [1, 0]; the attackers' cosines are negative.
    assert majority_core(updates).tolist() == [0, 1, 2]
    assert torch.allclose(median_trust_scores(updates), torch.tensor([1.0, 1.0, 0.0, 0.0]))


def test_median_trust_scores_zero_update_keeps_its_cosine():
    updates = torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    # a zero row has cosine 0 (torch's eps-guarded cosine) and no norm to bound
    assert torch.allclose(median_trust_scores(updates), torch.tensor([0.0, 1.0, 1.0]))


def test_ema_and_clip():
    alpha = ema_alpha(torch.tensor([1.0, 1.0]), torch.tensor([0.0, 1.0]), momentum=0.8, alpha_min=0.1, alpha_max=1.0)
    assert torch.allclose(alpha, torch.tensor([0.2, 1.0]))
    assert torch.allclose(ema_alpha(torch.tensor([0.1]), torch.tensor([0.0]), 0.8, 0.1, 1.0), torch.tensor([0.1]))


def test_rules_registered():
    assert set(ALPHA_RULES) == {"uniform", "loss", "similarity", "update_trust", "global_loss", "quality", "label_fit"}
    assert all(ALPHA_RULES[name].needs_pre_train_loss for name in ("global_loss", "quality", "label_fit"))
