"""Injected Byzantine parties for experiments: which parties attack, and what they send.

:class:`ByzantineAttack` picks a seeded set of ``round(fraction * N)``
parties, fixed for the run, and in each round replaces the update
(theta_i - theta_global) of those sampled by the attack's
(:mod:`fedlight.attacks.updates`), marking their results
``extras["byzantine"] = True`` (what the ``oracle`` strategy drops). The
attackers train honestly first and know the round's honest updates;
``label_flip`` is data poisoning instead: the Byzantine parties' labels
(train and validation) are all wrong, c -> c + 1 mod C, through the
label-noise path of :mod:`fedlight.data.corruption` (``shift`` mode,
probability 1), and their updates are sent as trained.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from fedlight.attacks import updates
from fedlight.data import FederatedData
from fedlight.data.corruption import choose_noisy_clients, corrupt_labels
from fedlight.strategies.base import ClientResult, Params

#: every attack; fedlight.config.ATTACK_NAMES is this with "none" in front
ATTACKS = ("sign_flip", "gaussian", "scale", "alie", "ipm", "label_flip")

_STREAM_BYZANTINE = 104729
_STREAM_NOISE = 130363


def _float_keys(params: Params) -> list[str]:
    return [k for k, v in params.items() if torch.is_floating_point(v)]


def _flat(params: Params, keys: list[str]) -> torch.Tensor:
    return torch.cat([params[k].reshape(-1).double() for k in keys])


class ByzantineAttack:
    """A seeded Byzantine set and the attack its members run each round.

    Hyperparameters: ``alie_z`` (None: the paper's z for the round's n
    sampled parties and f attackers among them, see
    :func:`~fedlight.attacks.updates.alie_z`), ``ipm_epsilon`` (0.5, the
    paper's value against robust rules; 2 is its value against the mean),
    ``gaussian_std`` (1.0: far above the size of a local SGD update, a
    party sending noise) and ``scale`` (10, the usual boosting factor).
    """

    def __init__(
        self,
        attack: str,
        *,
        num_clients: int,
        fraction: float,
        seed: int,
        alie_z: float | None = None,
        ipm_epsilon: float = 0.5,
        gaussian_std: float = 1.0,
        scale: float = 10.0,
    ):
        if attack not in ATTACKS:
            raise ValueError(f"unknown attack {attack!r}; choose from {', '.join(ATTACKS)}")
        if not 0 < fraction < 1:
            raise ValueError(f"byzantine fraction must be in (0, 1), got {fraction}")
        self.attack = attack
        self.seed = seed
        self.alie_z, self.ipm_epsilon, self.gaussian_std, self.scale = alie_z, ipm_epsilon, gaussian_std, scale
        rng = np.random.default_rng([seed, _STREAM_BYZANTINE])
        self.byzantine: list[int] = choose_noisy_clients(num_clients, fraction, rng)
        self._members = frozenset(self.byzantine)

    def describe(self, data: FederatedData | None = None) -> dict[str, Any]:
        """What to log once per run: the attack, its settings and the Byzantine set."""
        info: dict[str, Any] = {
            "attack": self.attack, "byzantine_clients": self.byzantine,
            "alie_z": self.alie_z, "ipm_epsilon": self.ipm_epsilon, "gaussian_std": self.gaussian_std, "scale": self.scale,
        }
        if data is not None:
            info["byzantine_client_names"] = [data.clients[c].name for c in self.byzantine]
        return info

    def poison_data(self, data: FederatedData) -> None:
        """label_flip: every label of the Byzantine parties' data made wrong (c -> c + 1 mod C), in place."""
        if self.attack != "label_flip":
            return
        rng = np.random.default_rng([self.seed, _STREAM_BYZANTINE, 1])
        for cid in self.byzantine:
            client = data.clients[cid]
            for name in ("train_y", "val_y"):
                labels = getattr(client, name).numpy()
                setattr(client, name, torch.from_numpy(corrupt_labels(labels, 1.0, "shift", data.num_classes, rng)))

    def apply(self, results: list[ClientResult], global_params: Params, server_round: int = 0) -> list[ClientResult]:
        """The round's results with the Byzantine parties' parameters replaced and marked."""
        attackers = [i for i, r in enumerate(results) if r.client_id in self._members]
        if not attackers:
            return results
        keys = _float_keys(global_params)
        base = _flat(global_params, keys)
        own = torch.stack([_flat(r.params, keys) - base for r in results])
        honest_rows = [i for i in range(len(results)) if i not in attackers]
        # no honest party sampled: the attackers' own honest updates are all they know
        honest = own[honest_rows] if honest_rows else own[attackers]
        shared = None
        if self.attack == "sign_flip":
            shared = updates.sign_flip(honest)
        elif self.attack == "alie":
            z = self.alie_z if self.alie_z is not None else updates.alie_z(len(results), len(attackers))
            shared = updates.alie(honest, z)
        elif self.attack == "ipm":
            shared = updates.ipm(honest, self.ipm_epsilon)
        out = list(results)
        for i in attackers:
            r = results[i]
            if self.attack == "label_flip":
                update = None
            elif self.attack == "scale":
                update = updates.scale(own[i], self.scale)
            elif self.attack == "gaussian":
                generator = torch.Generator().manual_seed(
                    int(np.random.SeedSequence([self.seed, _STREAM_NOISE, server_round, r.client_id]).generate_state(1)[0]))
                update = updates.gaussian(base.numel(), self.gaussian_std, generator, dtype=torch.float64)
            else:
                update = shared
            params = dict(r.params)
            if update is not None:
                flat, offset = base + update, 0
                for k in keys:
                    size = global_params[k].numel()
                    params[k] = flat[offset : offset + size].reshape(global_params[k].shape).to(r.params[k].dtype)
                    offset += size
            out[i] = dataclasses.replace(r, params=params, extras={**r.extras, "byzantine": True})
        return out


__all__ = ["ATTACKS", "ByzantineAttack", "updates"]
