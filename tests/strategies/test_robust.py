"""Robust rules on hand-computed inputs, and the strategies built on them."""

import pytest
import torch

from fedlight.cli import main
from fedlight.strategies import build_strategy
from fedlight.strategies.robust import coordinate_median, krum_scores, largest_f, multi_krum, trimmed_mean
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


def test_largest_f_fits_the_round():
    assert largest_f(3, 5, 1) == 1 and largest_f(3, 4, 1) == 0 and largest_f(1, 2, 1) == 0 and largest_f(1, 10, 2) == 2


@pytest.mark.parametrize("name, expected", [("median", [2.5, 15.0]), ("trimmed_mean", [2.5, 15.0])])
def test_robust_strategies_ignore_an_outlier_and_sample_counts(name, expected):
    strategy = build_strategy(name, {"byzantine_f": 1})
    results = [result(i, {"w": row, "step": torch.tensor(7)}, n=1000 if i == 3 else 1) for i, row in enumerate(ROWS)]
    new = strategy.aggregate(1, {"w": torch.zeros(2), "step": torch.tensor(0)}, results, [])
    assert new["w"].tolist() == expected
    assert int(new["step"]) == 0  # non-float entries stay the global model's
    assert strategy.round_metrics()["robust_f"] == (0.0 if name == "median" else 1.0)


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
