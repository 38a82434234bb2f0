"""Tiny stand-ins for Lightning objects so that callbacks can be tested by hand."""

from types import SimpleNamespace

import torch
from torch import nn


class ScalarModel(nn.Module):
    """One parameter w; embed(x) returns x * w (for MOON's tests)."""

    def __init__(self, value: float):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([value]))

    def embed(self, x):
        return x * self.w

    def head(self, z):
        return z


def fake_module(value: float, lr: float = 0.1):
    return SimpleNamespace(model=ScalarModel(value), lr=lr, report={})


def fake_trainer(global_step: int = 0):
    return SimpleNamespace(global_step=global_step)


def result(cid, params, n=1, **fields):
    from fedlight.strategies import ClientResult

    return ClientResult(client_id=cid, num_samples=n, params=params, num_steps=1, train_loss=0.0, **fields)
