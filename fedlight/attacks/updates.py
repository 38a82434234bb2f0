"""Attacks on the parties' updates (theta_i - theta_global), as pure tensor functions.

Each takes the round's honest updates as the rows of a matrix ``[k, d]``
(the omniscient threat model: the attackers see every honest update of the
round) and returns the one update every attacker sends, except
:func:`scale`, which scales an attacker's own update, and :func:`gaussian`.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import torch


def sign_flip(honest: torch.Tensor) -> torch.Tensor:
    """The honest mean with its sign flipped: -mean_i u_i (ByzFL's SignFlipping)."""
    return -honest.mean(dim=0)


def gaussian(size: int, std: float, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A random update, N(0, std^2) in each coordinate (ByzFL's Gaussian with mu = 0)."""
    return torch.randn(size, generator=generator, dtype=torch.float64).mul_(std).to(dtype)


def scale(own: torch.Tensor, factor: float) -> torch.Tensor:
    """The attacker's own (honestly trained) update times ``factor``."""
    return own * factor


def alie_z(n: int, f: int) -> float:
    """A Little Is Enough's z (Baruch, Baruch and Goldberg, NeurIPS 2019): s = floor(n/2 + 1) - f
    supporters needed, z = Phi^-1((n - s) / n). s is kept in [1, n - 1] so that z is finite."""
    if n < 2:
        return 0.0
    s = min(max(math.floor(n / 2 + 1) - f, 1), n - 1)
    return NormalDist().inv_cdf((n - s) / n)


def _std(honest: torch.Tensor) -> torch.Tensor:
    """The coordinate-wise standard deviation (unbiased, as ByzFL; zero for a single row)."""
    return honest.std(dim=0, correction=1) if honest.shape[0] > 1 else torch.zeros_like(honest[0])


def alie(honest: torch.Tensor, z: float) -> torch.Tensor:
    """mean + z * std, coordinate-wise (ByzFL's ALittleIsEnough with tau = z)."""
    return honest.mean(dim=0) + z * _std(honest)


def ipm(honest: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Inner product manipulation (Xie, Koyejo and Gupta, UAI 2020): -epsilon * the honest mean.

    epsilon 0.5 keeps the attack close to the honest updates (aimed at median
    and Krum-like rules); epsilon 2 outweighs them (aimed at the mean).
    """
    return -epsilon * honest.mean(dim=0)
