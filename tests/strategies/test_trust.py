import math

import torch

from fedlight.strategies.trust import (
    ALPHA_RULES,
    ema_alpha,
    excess_loss_scores,
    label_fit_scores,
    label_surprise_scores,
    majority_core,
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


def test_majority_core_hand_computed():
    # distances: ab 1, ad 2, bd 3, bc sqrt(17) = 4.12, ac sqrt(20) = 4.47, cd sqrt(32), ce sqrt(305), be 18, ae 19, de 21;
    # sums over the n // 2 = 2 nearest: a 1 + 2 = 3, b 1 + 3 = 4, c 4.12 + 4.47, d 2 + 3 = 5, e 17.46 + 18: keep 3
    assert majority_core(FIVE_UPDATES).tolist() == [0, 1, 3]
    assert majority_core(FIVE_UPDATES[:2]).tolist() == [0, 1]


def test_norm_screen_takes_its_scale_from_the_majority_core():
    # the core [0, 1, 3] has norms 1, 2, 1: lower median 1, so rows of norm <= 3 stay ([3, 4] has 5, [20, 0] 20)
    assert norm_screened_rows(FIVE_UPDATES).tolist() == [0, 1, 3]
    assert norm_screened_rows(FIVE_UPDATES, factor=5.0).tolist() == [0, 1, 2, 3]
    # three large updates of five, far from everything and from each other: the lower median of all five norms
    # is 50, which would keep them; sums over the 2 nearest: honest 0 + 49.2, [40, 30] 98.4, [-30, 40] 101.2,
    # [0, -50] 100.0: the core is both honest rows and [40, 30], its lower median norm 1
    noise = torch.tensor([[1.0, 0.0], [1.0, 0.0], [40.0, 30.0], [-30.0, 40.0], [0.0, -50.0]])
    assert majority_core(noise).tolist() == [0, 1, 2]
    assert norm_screened_rows(noise).tolist() == [0, 1]


def test_median_trust_scores_bound_the_norm():
    # the screened rows' coordinate-wise median: of [1, 2, -1] and of [0, 0, 0], [1, 0], norm 1.
    # Cosines 1, 1, 3/5, -1 -> 0, 1; norm factors min(1, 1/1) = 1, 1/2, 1/5, 1/1, 1/20.
    assert torch.allclose(trust_reference(FIVE_UPDATES), torch.tensor([1.0, 0.0]))
    scores = median_trust_scores(FIVE_UPDATES)
    assert torch.allclose(scores, torch.tensor([1.0, 0.5, 0.6 * 0.2, 0.0, 0.05]))
    # a party scaled x20 adds what the reference adds: weight x norm 0.05 x 20 = 1
    assert torch.isclose(scores[4] * FIVE_UPDATES[4].norm(), FIVE_UPDATES[0].norm())


def test_median_trust_scores_hold_when_half_the_round_sends_large_updates():
    updates = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-9.0, -9.0], [-10.0, -10.0]])
    # the plain median of the four is [-4, -4.5], half the attackers', which would trust them. The core (sums
    # over the 2 nearest: honest 0 + 13.45, [-9, -9] 1.41 + 13.45, [-10, -10] 1.41 + 14.87) is rows 0-2, its
    # lower median norm 1: the screen keeps the two honest rows, whose median is [1, 0]
    assert torch.allclose(median_trust_scores(updates), torch.tensor([1.0, 1.0, 0.0, 0.0]))


def test_identical_colluding_updates_do_not_take_the_reference_over():
    honest = torch.tensor([[4.0, 1.0], [1.0, 4.0], [3.0, 2.5]])
    updates = torch.cat([honest, torch.tensor([[-1.0, -1.0], [-1.0, -1.0]])])
    # sums over the 2 nearest: [3, 2.5] 1.80 + 2.5 = 4.30, the attackers 0 + 5.32 each, [4, 1] 1.80 + 4.24,
    # [1, 4] 2.5 + 4.24: the core is [3, 2.5] and the attackers, and its median would be theirs, [-1, -1].
    assert majority_core(updates).tolist() == [2, 3, 4]
    # its lower median norm sqrt(2): rows up to 3 sqrt(2) = 4.24 stay, all five (4.12, 4.12, 3.91, 1.41, 1.41);
    # x of [4, 1, 3, -1, -1] -> 1, y of [1, 4, 2.5, -1, -1] -> 1: reference [1, 1].
    # Scores cos x norm factor: [4, 1] 5 / sqrt(34) x sqrt(2) / sqrt(17) = 5 / 17, [1, 4] the same,
    # [3, 2.5] 5.5 / (sqrt(15.25) sqrt(2)) x sqrt(2) / sqrt(15.25) = 5.5 / 15.25; the attackers' cosines are -1
    assert torch.allclose(trust_reference(updates), torch.tensor([1.0, 1.0]))
    assert torch.allclose(median_trust_scores(updates), torch.tensor([5 / 17, 5 / 17, 5.5 / 15.25, 0.0, 0.0]))


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


def _round_of_ten(attackers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """10 - k honest updates m + noise (|m| = 1, |noise| about 3: non-IID parties) and the k attackers' rows."""
    generator = torch.Generator().manual_seed(0)
    d = 2000
    mean = torch.randn(d, generator=generator, dtype=torch.float64)
    mean /= mean.norm()
    honest = mean + torch.randn(10 - attackers.shape[0], d, generator=generator, dtype=torch.float64) * 3 / d**0.5
    return honest, attackers if attackers.shape[1] == d else attackers.expand(-1, d)


def test_update_trust_holds_three_identical_small_updates_and_six_noise_updates_of_ten():
    generator = torch.Generator().manual_seed(1)
    # IPM with epsilon 0.5 from 3 of 10: the honest mean times -0.5, the same row thrice, inside the majority core
    honest, _ = _round_of_ten(torch.zeros(3, 1))
    ipm = (-0.5 * honest.mean(dim=0)).expand(3, -1)
    updates = torch.cat([honest, ipm])
    # the median of 7 noisy rows is itself noisy (cosine 0.61 with their mean); the core's median points away (-0.29)
    assert torch.nn.functional.cosine_similarity(trust_reference(updates), honest.mean(dim=0), dim=0) > 0.5
    assert torch.nn.functional.cosine_similarity(updates[majority_core(updates)].median(dim=0).values,
                                                 honest.mean(dim=0), dim=0) < 0
    scores = median_trust_scores(updates)
    assert torch.all(scores[7:] == 0) and torch.all(scores[:7] > 0)
    # Gaussian noise (std 1) from 6 of 10: the lower median of all ten norms is noise's; the core's upper median is not
    honest, _ = _round_of_ten(torch.zeros(6, 1))
    noise = torch.randn(6, honest.shape[1], generator=generator, dtype=torch.float64)
    updates = torch.cat([honest, noise])
    assert norm_screened_rows(updates).tolist() == [0, 1, 2, 3]
    assert torch.nn.functional.cosine_similarity(trust_reference(updates), honest.mean(dim=0), dim=0) > 0.5
    pull = median_trust_scores(updates) * updates.norm(dim=1)  # what each row adds to the weighted sum
    assert pull[4:].sum() < 0.1 * pull[:4].sum()
