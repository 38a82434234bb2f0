import pytest
import torch

from fedlight.strategies.aggregation import normalize_weights, params_delta, weighted_average_params, weighted_mean


def test_weighted_mean_hand_computed():
    # (1*[1, 2] + 3*[5, 10]) / 4 = [4, 8]
    out = weighted_mean([torch.tensor([1.0, 2.0]), torch.tensor([5.0, 10.0])], [1, 3])
    assert torch.allclose(out, torch.tensor([4.0, 8.0]))


def test_weighted_mean_keeps_shape_and_dtype():
    a, b = torch.zeros(2, 3), torch.ones(2, 3)
    out = weighted_mean([a, b], [1.0, 1.0])
    assert out.shape == (2, 3) and out.dtype == torch.float32
    assert torch.allclose(out, torch.full((2, 3), 0.5))


def test_normalize_weights():
    assert torch.allclose(normalize_weights([2, 6]), torch.tensor([0.25, 0.75], dtype=torch.float64))
    with pytest.raises(ValueError):
        normalize_weights([0, 0])
    with pytest.raises(ValueError):
        normalize_weights([1, -1])


def test_weighted_average_params_by_sample_count():
    states = [{"w": torch.tensor([0.0]), "step": torch.tensor(3)}, {"w": torch.tensor([10.0]), "step": torch.tensor(7)}]
    out = weighted_average_params(states, [30, 10])
    assert torch.allclose(out["w"], torch.tensor([2.5]))  # (30*0 + 10*10) / 40
    assert out["step"].item() == 3  # integer buffers are not averaged


def test_params_delta():
    delta = params_delta({"w": torch.tensor([3.0, 1.0])}, {"w": torch.tensor([1.0, 1.0])})
    assert torch.equal(delta["w"], torch.tensor([2.0, 0.0]))


def test_plain_averager_weights_by_size_times_trust():
    from fedlight.strategies.base import PlainAverager
    from tests.strategies.helpers import result

    results = [result(0, {"w": torch.tensor([0.0])}, n=10), result(1, {"w": torch.tensor([3.0])}, n=20)]
    averager = PlainAverager()
    assert torch.allclose(averager.average(results, {})["w"], torch.tensor([2.0]))  # (10*0 + 20*3) / 30
    # trust 1 and 0.5: weights 10 and 10
    assert torch.allclose(averager.average(results, {}, torch.tensor([1.0, 0.5]))["w"], torch.tensor([1.5]))
    # all-zero trust falls back to sample counts
    assert torch.allclose(averager.average(results, {}, torch.zeros(2))["w"], torch.tensor([2.0]))
