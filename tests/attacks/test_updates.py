"""The attacks' update functions on hand-computed inputs (and ByzFL's test vectors where they agree)."""

import pytest
import torch

from fedlight.attacks import updates

# ByzFL's tests/unit_test_attacks.py: the honest vectors (1,2,3), (4,5,6), (7,8,9); mean (4,5,6), unbiased std 3
HONEST = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])


def test_sign_flip_ipm_and_alie_match_byzfl():
    assert updates.sign_flip(HONEST).tolist() == [-4.0, -5.0, -6.0]
    assert updates.ipm(HONEST, 2.0).tolist() == [-8.0, -10.0, -12.0]
    assert updates.ipm(HONEST, 0.5).tolist() == [-2.0, -2.5, -3.0]
    assert updates.alie(HONEST, 1.5).tolist() == [8.5, 9.5, 10.5]  # 4 + 1.5 * 3
    assert updates.alie(HONEST[:1], 2.0).tolist() == [1.0, 2.0, 3.0]  # one honest row: no spread to hide in


def test_alie_z_from_the_paper():
    # n = 10, f = 2: s = floor(6) - 2 = 4 supporters, z = Phi^-1(6/10)
    assert updates.alie_z(10, 2) == pytest.approx(0.2533471, abs=1e-6)
    # n = 4, f = 2: s = 1, z = Phi^-1(3/4)
    assert updates.alie_z(4, 2) == pytest.approx(0.6744898, abs=1e-6)
    # n = 10, f = 0: s = 6, Phi^-1(0.4) < 0; s is kept in [1, n - 1] so that z stays finite
    assert updates.alie_z(10, 0) == pytest.approx(-0.2533471, abs=1e-6)
    assert updates.alie_z(10, 9) == pytest.approx(updates.alie_z(10, 5)) and updates.alie_z(1, 1) == 0.0


def test_scale_and_gaussian():
    assert updates.scale(torch.tensor([0.5, -1.0]), 10.0).tolist() == [5.0, -10.0]
    a = updates.gaussian(20000, 3.0, torch.Generator().manual_seed(1))
    b = updates.gaussian(20000, 3.0, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.std().item() == pytest.approx(3.0, rel=0.03) and abs(a.mean().item()) < 0.1
