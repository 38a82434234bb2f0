import math

import torch

from fedlight.strategies.trust import (
    ALPHA_RULES,
    ema_alpha,
    excess_loss_scores,
    label_fit_scores,
    label_surprise_scores,
    median_cosine_scores,
    median_trust_scores,
    norm_screened_rows,
    relative_loss_scores,
    trust_reference,
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


def test_norm_screen_keeps_rows_up_to_three_times_the_lower_median_norm():
    # norms 1, 2, 5, 1, 20; sorted 1, 1, 2, 5, 20: lower median 2, so rows of norm <= 6 stay
    assert norm_screened_rows(FIVE_UPDATES).tolist() == [0, 1, 2, 3]
    assert norm_screened_rows(FIVE_UPDATES, factor=1.0).tolist() == [0, 1, 3]
    # an even count takes the lower of the two middle norms: 1, 1, 12.7, 14.1 -> 1
    assert norm_screened_rows(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-9.0, -9.0], [-10.0, -10.0]])).tolist() == [0, 1]


def test_median_trust_scores_bound_the_norm():
    # the screened rows' coordinate-wise median: x of [1, 2, 3, -1] -> (1 + 2) / 2, y of [0, 0, 4, 0] -> 0; [1.5, 0].
    # Cosines 1, 1, 3/5, -1 -> 0, 1; norm factors min(1, 1.5/1) = 1, 1.5/2, 1.5/5, 1.5/1, 1.5/20.
    assert torch.allclose(trust_reference(FIVE_UPDATES), torch.tensor([1.5, 0.0]))
    scores = median_trust_scores(FIVE_UPDATES)
    assert torch.allclose(scores, torch.tensor([1.0, 0.75, 0.6 * 0.3, 0.0, 0.075]))
    # a party scaled x20 adds what the reference adds: weight x norm 0.075 x 20 = 1.5
    assert torch.isclose(scores[4] * FIVE_UPDATES[4].norm(), torch.tensor(1.5))


def test_median_trust_scores_hold_when_half_the_round_sends_large_updates():
    updates = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-9.0, -9.0], [-10.0, -10.0]])
    # the plain median of the four is [-4, -4.5], half the attackers', which would trust them;
    # the screen keeps the two honest rows (norm 1 <= 3 x 1), whose median is [1, 0]
    assert torch.allclose(median_trust_scores(updates), torch.tensor([1.0, 1.0, 0.0, 0.0]))


def test_identical_colluding_updates_do_not_take_the_reference_over():
    honest = torch.tensor([[4.0, 1.0], [1.0, 4.0], [4.0, 4.0]])
    updates = torch.cat([honest, torch.tensor([[-1.0, -1.0], [-1.0, -1.0]])])
    # Krum-style core of 3 (sums of distances to the 2 nearest): the attackers 0 + sqrt(29) = 5.39 each, [4, 4]
    # 3 + 3 = 6, the others 3 + sqrt(18) = 7.24: its median would be the attackers' [-1, -1].
    # Norms 4.12, 4.12, 5.66, 1.41, 1.41: all stay; x of [4, 1, 4, -1, -1] -> 1, y likewise: reference [1, 1].
    # Honest: cos 5 / sqrt(34) x norm factor sqrt(2) / sqrt(17) = 5 / 17, and cos 1 x sqrt(2) / sqrt(32) = 1 / 4
    assert torch.allclose(trust_reference(updates), torch.tensor([1.0, 1.0]))
    assert torch.allclose(median_trust_scores(updates), torch.tensor([5 / 17, 5 / 17, 0.25, 0.0, 0.0]))


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
