"""Data sources: where the samples come from, before any partitioning.

Every source returns a :class:`SourceData`: a labelled train/test split and,
where the data has parties (writers, hospitals, folders), the party of each
sample, so that the ``natural`` partition makes one client per party.

* ``digits``, ``femnist``, ``crossdomain`` (:mod:`.images`): grayscale images.
* ``table`` (:mod:`.table`): a CSV or Parquet file with a party column.
* ``heart_disease`` (:mod:`.heart_disease`): UCI Heart Disease, four hospitals.
* ``folder`` (:mod:`.folder`): one ImageFolder tree per party.
* ``python`` (:mod:`.factory`): parties built by a user's Python callable.

Nothing here downloads.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedlight.config import HEART_DISEASE_MODES, SCALING_MODES
from fedlight.errors import ConfigError


@dataclass
class SourceData:
    """A labelled train/test split, optionally grouped by writer (party).

    ``train_x`` is float32 ``[N, 1, H, W]`` in [0, 1] for images and float32
    ``[N, F]`` for tables (``input_shape`` is then ``(F,)``). ``test_writer``
    gives the party whose own test set a test row belongs to, -1 for a row of
    a pooled test set that belongs to no party.
    """

    name: str
    train_x: np.ndarray  # float32 [N, 1, H, W] in [0, 1], or [N, F] for tables
    train_y: np.ndarray  # int64 [N]
    test_x: np.ndarray
    test_y: np.ndarray
    class_names: tuple[str, ...]
    train_writer: np.ndarray | None = None  # int [N], index into writer_ids
    test_writer: np.ndarray | None = None  # int [M], index into writer_ids, -1 = no party
    writer_ids: tuple[str, ...] | None = None
    # Multi-source data: the domain of each writer and of each test sample.
    domain_names: tuple[str, ...] | None = None
    writer_domain: np.ndarray | None = None
    test_domain: np.ndarray | None = None
    # Tables: the name of each feature column of train_x.
    feature_names: tuple[str, ...] | None = None
    # What was done to the raw data (JSON-serialisable), for the run to log.
    preprocessing: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])


def _as_columns(value: Any, name: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    try:
        columns = tuple(str(v) for v in value)
    except TypeError:
        raise ConfigError(f"{name} must be a list of column names, not {value!r}") from None
    return columns


@dataclass
class SourceOptions:
    """Options of the ``table``, ``heart_disease``, ``folder`` and ``python`` sources.

    The image sources (digits, femnist, crossdomain) ignore them.

    * ``party_column``, ``label_column`` (table, required): the column naming
      each row's party and its label.
    * ``split_column`` (table): a column of ``train``/``test``; without it each
      party's rows are split with a seeded stratified split of ``test_fraction``.
    * ``feature_columns``: the input columns (None = every other column).
    * ``categorical_columns``: one-hot encoded columns (None = infer: the
      columns that are not numeric).
    * ``scaling``: ``party`` (each party z-scores with its own train
      statistics, FLamby's choice), ``federated`` (a mean and variance combined
      from each party's train sums, sums of squares and counts; no rows pooled)
      or ``none``.
    * ``test_fraction``: share of each party's rows held out when the data has
      no split of its own.
    * ``data_factory`` (python): ``module:callable`` or ``module.callable``.
    * ``heart_disease_mode``: ``flamby`` (FLamby's exact preprocessing) or
      ``impute`` (every row kept, missing values imputed).
    """

    party_column: str | None = None
    label_column: str | None = None
    split_column: str | None = None
    feature_columns: tuple[str, ...] | None = None
    categorical_columns: tuple[str, ...] | None = None
    scaling: str = "party"
    test_fraction: float = 0.34
    data_factory: str | None = None
    heart_disease_mode: str = "flamby"

    def __post_init__(self) -> None:
        self.feature_columns = _as_columns(self.feature_columns, "feature_columns")
        self.categorical_columns = _as_columns(self.categorical_columns, "categorical_columns")
        if self.scaling not in SCALING_MODES:
            raise ConfigError(f"scaling must be one of {', '.join(SCALING_MODES)}, not {self.scaling!r}")
        if self.heart_disease_mode not in HEART_DISEASE_MODES:
            raise ConfigError(
                f"heart_disease_mode must be one of {', '.join(HEART_DISEASE_MODES)}, not {self.heart_disease_mode!r}"
            )
        try:
            self.test_fraction = float(self.test_fraction)
        except (TypeError, ValueError):
            raise ConfigError(f"test_fraction must be a number in [0, 1), not {self.test_fraction!r}") from None
        if not 0.0 <= self.test_fraction < 1.0:
            raise ConfigError(f"test_fraction must lie in [0, 1), not {self.test_fraction}")


# The loaders import SourceData and SourceOptions from this package, so they
# are imported once both are defined.
from fedlight.data.sources.factory import load_python  # noqa: E402
from fedlight.data.sources.folder import load_folder  # noqa: E402
from fedlight.data.sources.heart_disease import load_heart_disease  # noqa: E402
from fedlight.data.sources.images import (  # noqa: E402
    FEMNIST_CLASSES,
    load_crossdomain,
    load_digits,
    load_femnist,
)
from fedlight.data.sources.table import load_table  # noqa: E402

SOURCES: dict[str, Callable[..., SourceData]] = {
    "digits": load_digits,
    "femnist": load_femnist,
    "crossdomain": load_crossdomain,
    "table": load_table,
    "heart_disease": load_heart_disease,
    "folder": load_folder,
    "python": load_python,
}


def load_source(
    name: str, data_dir: str | None = None, seed: int = 0, options: SourceOptions | None = None
) -> SourceData:
    """Load the dataset ``name``; ``options`` reaches the sources that take them."""
    if name not in SOURCES:
        raise ConfigError(f"unknown dataset {name!r}; choose from {', '.join(SOURCES)}")
    loader = SOURCES[name]
    if "options" in inspect.signature(loader).parameters:
        return loader(data_dir, seed=seed, options=options if options is not None else SourceOptions())
    return loader(data_dir, seed=seed)


__all__ = [
    "FEMNIST_CLASSES",
    "SOURCES",
    "SourceData",
    "SourceOptions",
    "load_crossdomain",
    "load_digits",
    "load_femnist",
    "load_folder",
    "load_heart_disease",
    "load_python",
    "load_source",
    "load_table",
]
