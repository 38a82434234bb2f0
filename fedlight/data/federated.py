"""Assemble a federated dataset: partition, volume, local splits, corruption."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from fedlight.data.corruption import add_image_noise, choose_noisy_clients, corrupt_labels
from fedlight.data.partition import (
    apply_volume,
    dirichlet_partition,
    iid_partition,
    natural_partition,
    shards_partition,
    train_val_split,
)
from fedlight.data.sources import SourceData
from fedlight.errors import ConfigError

DEFAULT_NUM_CLIENTS = 10

# Independent random streams, so that changing one option (say the volume)
# leaves the others' draws (the partition) unchanged.
_STREAM_PARTITION, _STREAM_VOLUME, _STREAM_SPLIT, _STREAM_NOISY, _STREAM_CORRUPT = range(5)


@dataclass
class ClientData:
    """One party's local data; ``name`` is the writer id where there is one."""

    client_id: int
    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    corrupted: bool = False

    @property
    def num_train(self) -> int:
        return len(self.train_y)


@dataclass
class FederatedData:
    clients: list[ClientData]
    test_x: torch.Tensor
    test_y: torch.Tensor
    class_names: tuple[str, ...]
    input_shape: tuple[int, ...]  # (C, H, W) for images, (F,) for tables
    dataset: str
    corrupted_clients: list[int] = field(default_factory=list)
    domain_names: tuple[str, ...] | None = None
    test_domain: torch.Tensor | None = None
    # For each test row, the client whose own test set it belongs to (-1: none).
    # Set for the natural partition of a source whose test rows have writers, so
    # that each party's own test accuracy (and their mean, FLamby's metric) can
    # be reported.
    test_client: torch.Tensor | None = None
    # What the source did to the raw data (scaling, imputation, ...), for logging.
    preprocessing: dict = field(default_factory=dict)
    feature_names: tuple[str, ...] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def describe(self) -> dict[str, float | int]:
        sizes = np.array([c.num_train for c in self.clients])
        return {
            "num_clients": len(self.clients),
            "train_samples": int(sizes.sum()),
            "test_samples": len(self.test_y),
            "client_train_min": int(sizes.min()),
            "client_train_median": float(np.median(sizes)),
            "client_train_max": int(sizes.max()),
            "corrupted_clients": len(self.corrupted_clients),
        }


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream])


def build_federated_data(
    source: SourceData,
    *,
    partition: str,
    num_clients: int | None = None,
    dirichlet_beta: float = 0.5,
    shards_per_client: int = 2,
    volume: float = 1.0,
    val_fraction: float = 0.1,
    noisy_client_fraction: float = 0.0,
    label_noise: float = 0.0,
    label_noise_mode: str = "random",
    image_noise_std: float = 0.0,
    seed: int = 0,
    domain: str | None = None,
) -> FederatedData:
    """Split ``source`` into clients; deterministic for a given ``seed``.

    ``domain`` keeps only the parties of one source of a multi-source dataset
    (the test data keeps every domain, so transfer can be measured).
    """
    rng = _rng(seed, _STREAM_PARTITION)
    test_rows = np.arange(len(source.test_y))
    test_client = None
    names: list[str]
    if partition == "natural":
        parts = natural_partition(source.train_writer, num_clients, rng)
        writer_of_part = [int(source.train_writer[p[0]]) for p in parts]
        names = [source.writer_ids[w] if source.writer_ids else str(w) for w in writer_of_part]
        if domain is not None:
            if source.domain_names is None or domain not in source.domain_names:
                raise ConfigError(f"--domain {domain!r}: dataset {source.name} has domains {source.domain_names or 'none'}")
            wanted = source.domain_names.index(domain)
            kept = [i for i, w in enumerate(writer_of_part) if source.writer_domain[w] == wanted]
            parts, writer_of_part = [parts[i] for i in kept], [writer_of_part[i] for i in kept]
            names = [names[i] for i in kept]
        if source.test_writer is not None:
            # Evaluate on the pooled test data of the writers taking part, plus
            # the rows of a pooled test set that belong to no writer (-1).
            test_writer = np.asarray(source.test_writer)
            test_rows = np.flatnonzero(np.isin(test_writer, writer_of_part) | (test_writer < 0))
            client_of_writer = {w: cid for cid, w in enumerate(writer_of_part)}
            test_client = np.array([client_of_writer.get(int(w), -1) for w in test_writer[test_rows]], dtype=np.int64)
    else:
        if domain is not None:
            raise ConfigError("--domain needs the natural partition")
        n = num_clients or DEFAULT_NUM_CLIENTS
        if partition == "iid":
            parts = iid_partition(len(source.train_y), n, rng)
        elif partition == "dirichlet":
            parts = dirichlet_partition(source.train_y, n, dirichlet_beta, rng)
        elif partition == "shards":
            parts = shards_partition(source.train_y, n, shards_per_client, rng)
        else:
            raise ConfigError(f"unknown partition {partition!r}")
        names = [f"client-{i}" for i in range(n)]
    parts = apply_volume(parts, volume, _rng(seed, _STREAM_VOLUME))
    split_rng = _rng(seed, _STREAM_SPLIT)
    splits = [train_val_split(p, val_fraction, split_rng) for p in parts]
    noisy = set()
    if noisy_client_fraction > 0 and (label_noise > 0 or image_noise_std > 0):
        noisy = set(choose_noisy_clients(len(parts), noisy_client_fraction, _rng(seed, _STREAM_NOISY)))
    corrupt_rng = _rng(seed, _STREAM_CORRUPT)
    clients = []
    for cid, ((train_rows, val_rows), name) in enumerate(zip(splits, names)):
        xs = [source.train_x[train_rows], source.train_x[val_rows]]
        ys = [source.train_y[train_rows], source.train_y[val_rows]]
        if cid in noisy:
            if label_noise > 0:
                ys = [corrupt_labels(y, label_noise, label_noise_mode, source.num_classes, corrupt_rng) for y in ys]
            if image_noise_std > 0:
                xs = [add_image_noise(x, image_noise_std, corrupt_rng) for x in xs]
        clients.append(
            ClientData(
                client_id=cid,
                name=name,
                train_x=torch.from_numpy(np.ascontiguousarray(xs[0])),
                train_y=torch.from_numpy(np.ascontiguousarray(ys[0])),
                val_x=torch.from_numpy(np.ascontiguousarray(xs[1])),
                val_y=torch.from_numpy(np.ascontiguousarray(ys[1])),
                corrupted=cid in noisy,
            )
        )
    empty = [c.client_id for c in clients if c.num_train == 0]
    if empty:
        raise ConfigError(f"clients {empty[:5]} have no training data; use fewer --num-clients or a larger --volume")
    return FederatedData(
        clients=clients,
        test_x=torch.from_numpy(np.ascontiguousarray(source.test_x[test_rows])),
        test_y=torch.from_numpy(np.ascontiguousarray(source.test_y[test_rows])),
        class_names=source.class_names,
        input_shape=source.input_shape,
        dataset=source.name,
        corrupted_clients=sorted(noisy),
        domain_names=source.domain_names,
        test_domain=torch.from_numpy(source.test_domain[test_rows]) if source.test_domain is not None else None,
        test_client=torch.from_numpy(test_client) if test_client is not None else None,
        preprocessing=dict(source.preprocessing),
        feature_names=source.feature_names,
    )
