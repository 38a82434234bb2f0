"""Data-quality heterogeneity: corrupt a seeded subset of parties.

Unreliable parties are modelled by label noise (``random``: the label is
replaced by a different class drawn uniformly; ``shift``: class c is recorded
as c + 1 mod C, a misaligned label schema) and by Gaussian pixel noise.
"""

from __future__ import annotations

import numpy as np


def choose_noisy_clients(num_clients: int, fraction: float, rng: np.random.Generator) -> list[int]:
    """A seeded set of ``round(fraction * num_clients)`` client positions."""
    count = int(round(fraction * num_clients))
    return sorted(int(c) for c in rng.choice(num_clients, size=count, replace=False))


def corrupt_labels(
    labels: np.ndarray, probability: float, mode: str, num_classes: int, rng: np.random.Generator
) -> np.ndarray:
    """Return a copy of ``labels`` with each one corrupted with ``probability``."""
    labels = labels.copy()
    hit = rng.random(len(labels)) < probability
    if mode == "shift":
        labels[hit] = (labels[hit] + 1) % num_classes
    elif mode == "random":
        # An offset in [1, C-1] guarantees the new label differs from the old.
        offsets = rng.integers(1, num_classes, size=int(hit.sum()))
        labels[hit] = (labels[hit] + offsets) % num_classes
    else:
        raise ValueError(f"unknown label noise mode {mode!r}")
    return labels


def add_image_noise(images: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian pixel noise, clipped back to [0, 1].

    Tables (``[N, F]`` rows of scaled features) get the noise unclipped.
    """
    noisy = images + rng.normal(0.0, std, size=images.shape).astype(images.dtype)
    if images.ndim == 2:
        return noisy
    return np.clip(noisy, 0.0, 1.0)
