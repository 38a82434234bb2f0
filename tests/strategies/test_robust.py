"""Robust rules on hand-computed inputs, and the strategies built on them."""

import pytest
import torch

from fedlight.cli import main
from fedlight.strategies import build_strategy
from fedlight.strategies.robust import (
    bucketing,
    bulyan,
    centered_clipping,
    clipping_radius,
    coordinate_median,
    krum_scores,
    largest_f,
    multi_krum,
    nearest_neighbour_mixing,
    trimmed_mean,
)
from tests.strategies.helpers import result

ROWS = torch.tensor([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [100.0, -5.0]])
LINE = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0]])


def test_median_odd_and_even_counts():
    assert torch.equal(coordinate_median(ROWS[:3]), torch.tensor([2.0, 20.0]))
    # even: the mean of the two middle values, coordinate by coordinate (1,2,3,100 and -5,10,20,30)
    assert torch.equal(coordinate_median(ROWS), torch.tensor([2.5, 15.0]))


def test_trimmed_mean_drops_f_per_side():
    assert torch.equal(trimmed_mean(ROWS, 1), torch.tensor([2.5, 15.0]))
    assert torch.allclose(trimmed_mean(ROWS, 0), ROWS.mean(dim=0))
    with pytest.raises(ValueError):
        trimmed_mean(ROWS, 2)


def test_krum_scores_and_choices_hand_computed():
    # n = 5, f = 1: each row's 2 nearest squared distances: 0 -> 1+4, 1 -> 1+1, 2 -> 1+4, 10 -> 1+64, 11 -> 1+81
    assert krum_scores(LINE, 1).tolist() == [5.0, 2.0, 5.0, 65.0, 82.0]
    chosen, index = multi_krum(LINE, 1, 1)
    assert chosen.tolist() == [1.0] and index.tolist() == [1]
    # m = n - f = 4: rows 1, 0, 2 (a tie broken by index), 3 -> mean of 1, 0, 2, 10
    chosen, index = multi_krum(LINE, 1, 4)
    assert index.tolist() == [1, 0, 2, 3] and chosen.tolist() == [3.25]
    with pytest.raises(ValueError):
        krum_scores(LINE[:3], 1)


def test_pre_aggregation_names_match_config():
    from fedlight import config
    from fedlight.strategies import robust

    assert config.PRE_AGGREGATIONS == robust.PRE_AGGREGATIONS


def test_largest_f_fits_the_round():
    assert largest_f(3, 5, 1) == 1 and largest_f(3, 4, 1) == 0 and largest_f(1, 2, 1) == 0 and largest_f(1, 10, 2) == 2


@pytest.mark.parametrize("name, expected", [("median", [2.5, 15.0]), ("trimmed_mean", [2.5, 15.0])])
def test_robust_strategies_ignore_an_outlier_and_sample_counts(name, expected):
    strategy = build_strategy(name, {"byzantine_f": 1})
    results = [result(i, {"w": row, "step": torch.tensor(7)}, n=1000 if i == 3 else 1) for i, row in enumerate(ROWS)]
    new = strategy.aggregate(1, {"w": torch.zeros(2), "step": torch.tensor(0)}, results, [])
    assert new["w"].tolist() == expected
    assert int(new["step"]) == 0  # non-float entries stay the global model's
    assert strategy.round_metrics()["robust_f"] == 1.0  # median's f only sets NNM's neighbours


def test_krum_strategies_pick_and_average_whole_models():
    results = [result(i, {"a": row, "b": 2 * row}) for i, row in enumerate(LINE)]
    krum = build_strategy("krum", {"byzantine_f": 1}).aggregate(1, {"a": torch.zeros(1), "b": torch.zeros(1)}, results, [])
    assert krum["a"].tolist() == [1.0] and krum["b"].tolist() == [2.0]
    multi = build_strategy("multi_krum", {"byzantine_f": 1}).aggregate(1, {"a": torch.zeros(1), "b": torch.zeros(1)}, results, [])
    # the distances are over the whole model: (a, 2a) scales every distance by 5, the choice is the same
    assert multi["a"].tolist() == [3.25] and multi["b"].tolist() == [6.5]


def test_robust_rules_with_client_level_dp_are_refused(tracking_uri, capsys):
    code = main(["run", "--dataset", "digits", "--num-clients", "4", "--clients-per-round", "2", "--rounds", "1",
                 "--no-progress", "--strategy", "krum", "--dp-mode", "client", "--dp-noise", "1", "--tracking-uri", tracking_uri])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "robust rule" in err


# ByzFL's tests/unit_test_*.py use these three rows for every aggregator
BYZFL = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
SEVEN = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0], [100.0]])


def test_bulyan_hand_computed():
    # n = 7, f = 1: theta = 5 picks by Krum among the rows left (neighbours max(1, r - f - 2)):
    # r=7 (4 neighbours): scores 30, 15, 10, 10, 15, 30, huge -> 2 (tie with 3: lower index)
    # r=6 (3): 0:1+9+16, 1:1+4+9, 3:1+4+4=9, 4:1+1+9, 5:1+4+16 -> 3
    # r=5 (2): 0:17, 1:10, 4:10, 5:17 -> 1;  r=4 (1): 0:16, 4:1, 5:1 -> 4;  r=3 (1): 0:25, 5:25 -> 0
    # picked {0, 1, 2, 3, 4}: median 2, the beta = 3 closest to it are 1, 2, 3 -> 2; 100 never counts
    assert bulyan(SEVEN, 1).tolist() == [2.0]
    # Flower's bulyan_test.py: f = 0 keeps every row and trims none, the plain mean
    six = torch.tensor([[0.2] * 4, [0.5] * 4, [0.7] * 4, [12.0] * 4, [0.1] * 4, [0.1] * 4])
    assert torch.allclose(bulyan(six, 0), six.mean(dim=0))
    with pytest.raises(ValueError, match="4f"):
        bulyan(SEVEN[:6], 1)


def test_bulyan_strategy_refuses_a_run_too_small_but_survives_a_short_round():
    from fedlight.config import RunConfig, validate
    from fedlight.errors import ConfigError

    config = RunConfig()
    config.strategy.name, config.strategy.byzantine_f, config.training.clients_per_round = "bulyan", 1, 6
    with pytest.raises(ConfigError, match="bulyan needs --clients-per-round >= 4 \\* --byzantine-f \\+ 3 = 7"):
        validate(config)
    config.training.clients_per_round = 7
    validate(config)
    # a round in which parties failed: 6 results, f falls to 0 (the mean of the picked), no crash
    strategy = build_strategy("bulyan", {"byzantine_f": 1})
    results = [result(i, {"w": row}) for i, row in enumerate(SEVEN[:6])]
    new = strategy.aggregate(1, {"w": torch.zeros(1)}, results, [])
    assert new["w"].tolist() == [2.5] and strategy.round_metrics()["robust_f"] == 0.0
    new = strategy.aggregate(1, {"w": torch.zeros(1)}, [result(i, {"w": row}) for i, row in enumerate(SEVEN)], [])
    assert new["w"].tolist() == [2.0] and strategy.round_metrics()["robust_f"] == 1.0


def test_centered_clipping_hand_computed():
    rows = torch.tensor([[3.0, 4.0], [0.0, 0.0], [-6.0, 8.0]])
    # distances to 0: 5, 0, 10; tau 5 halves the third: mean of (3,4), (0,0), (-3,4) = (0, 8/3)
    assert torch.allclose(centered_clipping(rows, torch.zeros(2), 5.0, 1), torch.tensor([0.0, 8 / 3]))
    # tau None: the median distance, 5 here
    assert torch.allclose(centered_clipping(rows, torch.zeros(2), None, 1), torch.tensor([0.0, 8 / 3]))
    # a centre equal to every row stays put, whatever tau and the iterations
    assert torch.equal(centered_clipping(torch.ones(3, 2), torch.ones(2), 0.1, 3), torch.ones(2))
    # ByzFL's CenteredClipping() (m = 0, L = 1, tau = 100): nothing is clipped, the mean
    assert torch.equal(centered_clipping(BYZFL, torch.zeros(3), 100.0, 1), torch.tensor([4.0, 5.0, 6.0]))


def test_centered_clipping_strategy_centres_on_the_previous_aggregate_and_checkpoints_it():
    strategy = build_strategy("centered_clipping", {"clip_tau": 5.0})
    glob = {"w": torch.ones(2)}
    rows = torch.tensor([[3.0, 4.0], [0.0, 0.0], [-6.0, 8.0]])
    new = strategy.aggregate(1, glob, [result(i, {"w": 1 + row}) for i, row in enumerate(rows)], [])
    assert torch.allclose(new["w"], torch.tensor([1.0, 1 + 8 / 3]))
    saved = strategy.state_dict()
    assert torch.allclose(saved["previous_update"], torch.tensor([0.0, 8 / 3]))
    # round 2: the centre is the previous update (0, 8/3); a party 20 away along x is clipped to 5 from it
    restored = build_strategy("centered_clipping", {"clip_tau": 5.0})
    restored.load_state_dict(saved)
    updates = torch.tensor([[0.0, 8 / 3], [0.0, 8 / 3], [20.0, 8 / 3]])
    new = restored.aggregate(2, glob, [result(i, {"w": 1 + u}) for i, u in enumerate(updates)], [])
    assert torch.allclose(new["w"], torch.tensor([1 + 5 / 3, 1 + 8 / 3]))


def test_clipping_radius_is_the_median_of_the_n_minus_f_smallest_distances():
    distances = torch.tensor([5.0, 1.0, 100.0, 3.0, 200.0])
    assert clipping_radius(distances, 0) == 5.0  # 1, 3, 5, 100, 200
    assert clipping_radius(distances, 1) == 4.0  # 1, 3, 5, 100: (3 + 5) / 2
    assert clipping_radius(distances, 2) == 3.0  # 1, 3, 5
    # 3 far attackers of 6 (f = 2 expected): the plain median, (3 + 50) / 2, would be set by an attacker
    assert clipping_radius(torch.tensor([1.0, 2.0, 3.0, 50.0, 60.0, 70.0]), 2) == 2.5
    with pytest.raises(ValueError):
        clipping_radius(distances, 5)


def test_centered_clipping_default_radius_grows_at_most_by_the_growth_factor():
    strategy = build_strategy("centered_clipping", {"byzantine_f": 0, "clip_tau_growth": 2.0})
    glob = {"w": torch.zeros(1)}
    # round 1: distances 1, 2, 3 from the zero centre: radius 2, so 3 is clipped to 2: mean (1 + 2 + 2) / 3
    new = strategy.aggregate(1, glob, [result(i, {"w": torch.tensor([v])}) for i, v in enumerate([1.0, 2.0, 3.0])], [])
    assert new["w"].item() == pytest.approx(5 / 3)
    assert strategy.round_metrics()["clip_tau"] == 2.0
    # round 2, centre 5/3: a Byzantine majority 100 away would set the median radius near 100; the cap is 2 x 2
    updates = [5 / 3, 5 / 3 + 100, 5 / 3 + 100]
    new = strategy.aggregate(2, glob, [result(i, {"w": torch.tensor([v])}) for i, v in enumerate(updates)], [])
    assert strategy.round_metrics()["clip_tau"] == pytest.approx(4.0)
    assert new["w"].item() == pytest.approx(5 / 3 + 8 / 3)  # (0 + 4 + 4) / 3 from the centre
    restored = build_strategy("centered_clipping", {"byzantine_f": 0})
    restored.load_state_dict(strategy.state_dict())
    assert restored.previous_tau == pytest.approx(4.0)
    with pytest.raises(Exception, match="clip_tau_growth"):
        build_strategy("centered_clipping", {"clip_tau_growth": 0.5})


def test_nearest_neighbour_mixing_hand_computed():
    # ByzFL's NNM(1): each row with its nearest other (row 1's two are equidistant: the lower index)
    expected = torch.tensor([[2.5, 3.5, 4.5], [2.5, 3.5, 4.5], [5.5, 6.5, 7.5]])
    assert torch.equal(nearest_neighbour_mixing(BYZFL, 1), expected)
    # n = 5, f = 1: 0, 1 and 2 mix with {0, 1, 2, 10} (3.25); 10 and 11 with {1, 2, 10, 11} (6)
    assert nearest_neighbour_mixing(LINE, 1).flatten().tolist() == [3.25, 3.25, 3.25, 6.0, 6.0]
    assert torch.equal(nearest_neighbour_mixing(LINE, 0), LINE.mean(dim=0).expand(5, 1))


def test_bucketing_partitions_a_seeded_permutation():
    powers = torch.tensor([[1.0], [2.0], [4.0], [8.0], [16.0]])
    buckets = bucketing(powers, 2, torch.Generator().manual_seed(3))
    assert buckets.shape == (3, 1)
    # two buckets of two and the rest: the sums are sums of distinct powers of two, so they decode to a partition
    sums = [int(b * 2) for b in buckets[:2].flatten().tolist()] + [int(buckets[2])]
    assert sum(sums) == 31 and sums[0] | sums[1] | sums[2] == 31  # disjoint: every power exactly once
    assert [bin(a).count("1") for a in sums] == [2, 2, 1]
    assert sorted(bucketing(powers, 1, torch.Generator().manual_seed(3)).flatten().tolist()) == [1, 2, 4, 8, 16]
    assert torch.allclose(bucketing(powers, 5, torch.Generator().manual_seed(3)), torch.tensor([[6.2]]))
    again = bucketing(powers, 2, torch.Generator().manual_seed(3))
    assert torch.equal(again, buckets)


def test_pre_aggregation_in_a_strategy():
    results = [result(i, {"w": row}) for i, row in enumerate(LINE)]
    mixed = build_strategy("trimmed_mean", {"byzantine_f": 1, "pre_aggregation": "nnm"})
    # NNM gives 3.25, 3.25, 3.25, 6, 6; trimming one per side leaves 3.25, 3.25, 6
    assert torch.allclose(mixed.aggregate(1, {"w": torch.zeros(1)}, results, [])["w"], torch.tensor([12.5 / 3]))
    bucketed = build_strategy("median", {"pre_aggregation": "bucketing", "bucket_size": 5})
    # one bucket: the mean
    assert torch.allclose(bucketed.aggregate(1, {"w": torch.zeros(1)}, results, [])["w"], torch.tensor([4.8]))
    # bucketing is seeded by the round and its parties: the same round aggregates the same way twice
    twice = [build_strategy("krum", {"pre_aggregation": "bucketing"}).aggregate(4, {"w": torch.zeros(1)}, results, [])
             for _ in range(2)]
    assert torch.equal(twice[0]["w"], twice[1]["w"])
    with pytest.raises(Exception, match="pre_aggregation"):
        build_strategy("median", {"pre_aggregation": "mix"})


def test_oracle_drops_parties_marked_byzantine():
    results = [result(0, {"w": torch.tensor([1.0])}), result(1, {"w": torch.tensor([3.0])}),
               result(2, {"w": torch.tensor([-100.0])}, extras={"byzantine": True})]
    new = build_strategy("oracle").aggregate(1, {"w": torch.zeros(1)}, results, [])
    assert new["w"].tolist() == [2.0]
