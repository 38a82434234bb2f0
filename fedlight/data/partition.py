"""Partitioners: split a pooled training set into per-client index sets.

Each partitioner is a pure function of the labels (and writers) and a seeded
``numpy.random.Generator``, returning one sorted index array per client.
"""

from __future__ import annotations

import numpy as np

from fedlight.errors import ConfigError


def natural_partition(
    writers: np.ndarray | None, num_clients: int | None, rng: np.random.Generator
) -> list[np.ndarray]:
    """One client per writer; ``num_clients`` keeps a seeded subset of writers."""
    if writers is None:
        raise ConfigError("partition 'natural' needs a dataset with writers (femnist); use iid, dirichlet or shards")
    unique = np.unique(writers)
    if num_clients is not None:
        if num_clients > len(unique):
            raise ConfigError(f"--num-clients {num_clients} exceeds the {len(unique)} writers in the data")
        unique = np.sort(rng.choice(unique, size=num_clients, replace=False))
    order = np.argsort(writers, kind="stable")
    starts = np.searchsorted(writers[order], unique, side="left")
    ends = np.searchsorted(writers[order], unique, side="right")
    return [np.sort(order[s:e]) for s, e in zip(starts, ends)]


def iid_partition(num_samples: int, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A random permutation cut into ``num_clients`` near-equal parts."""
    _check_enough(num_samples, num_clients)
    return [np.sort(part) for part in np.array_split(rng.permutation(num_samples), num_clients)]


def dirichlet_partition(
    labels: np.ndarray,
    num_clients: int,
    beta: float,
    rng: np.random.Generator,
    min_samples: int = 2,
    max_tries: int = 100,
) -> list[np.ndarray]:
    """Label skew: each class is split over clients by proportions ~ Dir(beta).

    Hsu, Qi and Brown, "Measuring the Effects of Non-Identical Data
    Distribution for Federated Visual Classification" (2019). Smaller ``beta``
    means more skew. Draws are repeated (deterministically) until every client
    holds at least ``min_samples`` samples.
    """
    _check_enough(len(labels), num_clients * min_samples)
    classes = np.unique(labels)
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for label in classes:
            rows = rng.permutation(np.flatnonzero(labels == label))
            proportions = rng.dirichlet(np.full(num_clients, beta))
            cuts = (np.cumsum(proportions)[:-1] * len(rows)).astype(int)
            for client, chunk in enumerate(np.split(rows, cuts)):
                parts[client].append(chunk)
        merged = [np.sort(np.concatenate(chunks)) for chunks in parts]
        if min(len(m) for m in merged) >= min_samples:
            return merged
    raise ConfigError(
        f"dirichlet partition with beta={beta} left a client with fewer than {min_samples} samples "
        f"after {max_tries} draws; use fewer clients or a larger --dirichlet-beta"
    )


def shards_partition(
    labels: np.ndarray, num_clients: int, classes_per_client: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Pathological label skew: each client holds ``classes_per_client`` classes.

    McMahan et al., "Communication-Efficient Learning of Deep Networks from
    Decentralized Data" (AISTATS 2017). Class slots are dealt round-robin over
    a shuffled class order so every class is used about equally; each class's
    samples are split evenly among the clients that hold it.
    """
    classes = np.unique(labels)
    if classes_per_client > len(classes):
        raise ConfigError(f"--shards-per-client {classes_per_client} exceeds the {len(classes)} classes")
    _check_enough(len(labels), num_clients)
    deck = np.concatenate([rng.permutation(classes) for _ in range(-(-num_clients * classes_per_client // len(classes)))])
    owners: dict[int, list[int]] = {int(c): [] for c in classes}
    position = 0
    for client in range(num_clients):
        held: set[int] = set()
        while len(held) < classes_per_client:
            label = int(deck[position % len(deck)])
            position += 1
            if label not in held:
                held.add(label)
                owners[label].append(client)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for label, clients in owners.items():
        if not clients:
            continue
        rows = rng.permutation(np.flatnonzero(labels == label))
        for client, chunk in zip(clients, np.array_split(rows, len(clients))):
            parts[client].append(chunk)
    return [np.sort(np.concatenate(p)) if p else np.empty(0, dtype=np.int64) for p in parts]


def apply_volume(parts: list[np.ndarray], volume: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Keep a seeded ``volume`` share (at least one sample) of every client's data."""
    if volume >= 1.0:
        return parts
    return [
        np.sort(rng.choice(p, size=max(1, int(round(volume * len(p)))), replace=False)) if len(p) else p
        for p in parts
    ]


def train_val_split(
    indices: np.ndarray, val_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split a client's rows; a client with two or more rows keeps at least one for each side."""
    n_val = int(round(val_fraction * len(indices)))
    if val_fraction > 0 and len(indices) >= 2:
        n_val = min(max(n_val, 1), len(indices) - 1)
    shuffled = rng.permutation(indices)
    return np.sort(shuffled[n_val:]), np.sort(shuffled[:n_val])


def _check_enough(num_samples: int, needed: int) -> None:
    if num_samples < needed:
        raise ConfigError(f"only {num_samples} training samples for {needed} client slots; use fewer --num-clients")
