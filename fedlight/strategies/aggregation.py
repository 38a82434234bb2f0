"""Pure tensor functions behind the strategies, unit-tested on tiny inputs."""

from __future__ import annotations

from collections.abc import Sequence

import torch

Params = dict[str, torch.Tensor]


def normalize_weights(weights: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Non-negative weights scaled to sum to one (float64 for exact sums)."""
    w = torch.as_tensor(weights, dtype=torch.float64)
    if w.ndim != 1 or len(w) == 0:
        raise ValueError("weights must be a non-empty 1-D sequence")
    if bool((w < 0).any()) or not bool(torch.isfinite(w).all()):
        raise ValueError(f"weights must be finite and non-negative, got {w.tolist()}")
    total = w.sum()
    if total <= 0:
        raise ValueError("weights sum to zero")
    return w / total


def weighted_mean(tensors: Sequence[torch.Tensor], weights: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """sum_i w_i x_i / sum_i w_i over a stack of same-shaped tensors."""
    w = normalize_weights(weights).tolist()
    # In-place accumulation: stacking 10 copies of a 6.6M-parameter model in
    # float64 cost more than the clients' training on small models.
    out = torch.zeros_like(tensors[0])
    for weight, tensor in zip(w, tensors, strict=True):
        out.add_(tensor, alpha=weight)
    return out


def weighted_average_params(states: Sequence[Params], weights: Sequence[float] | torch.Tensor) -> Params:
    """Key-wise :func:`weighted_mean`; non-float entries are taken from the first state."""
    if not states:
        raise ValueError("no states to average")
    out: Params = {}
    for key, first in states[0].items():
        if torch.is_floating_point(first):
            out[key] = weighted_mean([s[key] for s in states], weights)
        else:
            out[key] = first.clone()
    return out


def params_delta(new: Params, old: Params) -> Params:
    """new - old, key-wise (a client's update)."""
    return {k: new[k] - old[k] for k in old}


def flatten(params: Params) -> torch.Tensor:
    return torch.cat([v.reshape(-1).to(torch.float32) for v in params.values()])
