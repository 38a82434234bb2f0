"""Tabular data with one party per value of a column: ``--dataset table --data-dir FILE``.

The file is a CSV (``.csv``, first line = column names) or Parquet
(``.parquet``/``.pq``, read with pyarrow). ``party_column`` names each row's
party (one client per party under the ``natural`` partition) and
``label_column`` its class (any values; the classes are the sorted distinct
values, so binary and multi-class tasks both work). The test rows come from
``split_column`` (values ``train``/``test``, any case) where there is one;
otherwise each party's rows are split on their own with a seeded stratified
split (``test_fraction``, ``random_state`` = the run seed; stratified when every
class present in the party has more than 2 rows, as FLamby does).

Preprocessing, in order (all recorded in ``SourceData.preprocessing``):

1. Categorical columns (``categorical_columns``, or inferred: the columns
   whose values are not numbers) are one-hot encoded. The categories are the
   sorted union of the values over every party's rows: the parties share the
   *names* of their categories, never their rows.
2. Missing values. A ``<col>_missing`` 0/1 column is added for every feature
   column with a missing value anywhere in the file. Missing numeric values are
   imputed with the party's own train mean (``party`` scaling), a federated
   train mean (``federated``: each party sends the sum and count of its
   observed train values) or 0 (``none``). A party that observed no value of a
   column imputes 0 there. A missing category is all zeros in its one-hot block.
3. Scaling of the numeric columns (one-hot and indicator columns stay 0/1):
   ``party`` z-scores each party with the mean and unbiased std of its own
   train rows (FLamby's choice); ``federated`` uses a mean and variance the
   server combines from each party's train sums, sums of squares and counts
   (no raw row leaves a party); ``none`` leaves the values. The divisor is
   ``std + 1e-9`` as in FLamby. A constant column becomes 0: under ``party``,
   a column constant on a party's train rows is 0 in that party's train and
   test rows (FLamby would divide a differing test value by 1e-9); under
   ``federated``, a column constant on every party's train rows. Test rows of a
   party use that party's (or the federated) train statistics.

:func:`encode_parties` and :func:`split_party` are shared with the
``heart_disease`` source.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedlight.data.sources import SourceData, SourceOptions
from fedlight.errors import ConfigError, DataError

TABLE_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
STD_EPSILON = 1e-9  # FLamby's: x_scaled = (x - mean) / (std + 1e-9)


@dataclass
class PartySplit:
    """One party's rows before encoding.

    ``train``/``test`` hold the feature columns: numeric ones as float64 (NaN =
    missing), categorical ones as read (NaN/None = missing).
    """

    name: str
    train: Any  # pandas.DataFrame
    test: Any  # pandas.DataFrame
    train_y: np.ndarray
    test_y: np.ndarray


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def value_name(value: Any) -> str:
    """``2.0`` -> ``"2"``, other values as ``str``."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def sorted_values(values: Sequence[Any]) -> list[Any]:
    """Distinct non-missing values, numerically sorted if they are all numbers, else by name."""
    import pandas as pd

    distinct = list(pd.unique(pd.Series(list(values), dtype=object).dropna()))
    if all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)) for v in distinct):
        return sorted(distinct, key=float)
    return sorted(distinct, key=value_name)


def read_table(path: Path):
    """The file as a DataFrame with string column names; DataError on any failure."""
    import pandas as pd

    kind = TABLE_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unknown table format {path.suffix or '(no extension)'!r}; use .csv, .parquet or .pq")
    if not path.is_file():
        raise DataError(f"table file not found: {path}")
    try:
        if kind == "csv":
            frame = pd.read_csv(path)
        else:
            frame = pd.read_parquet(path, engine="pyarrow")
    except ImportError as exc:
        raise ConfigError(f"reading {path} needs pyarrow ({_one_line(exc)})") from None
    except Exception as exc:  # parser, Arrow, Unicode and OS errors all mean "cannot read"
        raise DataError(f"cannot read {path}: {_one_line(exc)}") from None
    frame.columns = [str(c) for c in frame.columns]
    return frame.reset_index(drop=True)


def _mostly_numbers(series) -> bool:
    import pandas as pd

    observed = series.dropna()
    if observed.empty:
        return True
    return bool(pd.to_numeric(observed, errors="coerce").notna().mean() > 0.5)


def is_numeric_column(series) -> bool:
    """The inference of ``categorical_columns=None``: numbers (and booleans) are numeric.

    A text column whose values are mostly (more than half) numbers counts as
    numeric too, so a stray typo is reported instead of one-hot encoding it.
    """
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    return is_numeric_dtype(series) or is_bool_dtype(series) or _mostly_numbers(series)


def numeric_values(series, column: str, where: str, row: Callable[[int], str]) -> np.ndarray:
    """A declared-numeric column as float64 (NaN = missing); DataError naming a bad value."""
    import pandas as pd
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    if is_bool_dtype(series) or is_numeric_dtype(series):
        values = series.astype("float64").to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        coerced = pd.to_numeric(series, errors="coerce")
        bad = series.notna().to_numpy() & coerced.isna().to_numpy()
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{where}: column {column!r} is numeric but holds the non-numeric value {series.iloc[first]!r} "
                f"({row(first)}); fix it or list the column in categorical_columns"
            )
        values = coerced.astype("float64").to_numpy(dtype=np.float64, na_value=np.nan)
    infinite = np.isinf(values)
    if infinite.any():
        first = int(np.flatnonzero(infinite)[0])
        raise DataError(f"{where}: column {column!r} holds an infinite value ({row(first)})")
    return values


def split_party(
    labels: np.ndarray, test_fraction: float, random_state: int, train_size: float | None = None
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Seeded train/test row indices of one party (sorted), and whether the split was stratified.

    ``train_test_split(np.arange(n), test_size=test_fraction, random_state=...)``,
    stratified on the labels when the party has two or more classes and every
    one of them has more than 2 rows (FLamby's rule).
    """
    from sklearn.model_selection import train_test_split

    n = len(labels)
    if test_fraction <= 0:
        return np.arange(n), np.arange(0), False
    levels, counts = np.unique(labels, return_counts=True)
    stratify = labels if len(levels) > 1 and bool((counts > 2).all()) else None
    try:
        train, test = train_test_split(
            np.arange(n), test_size=test_fraction, train_size=train_size, random_state=random_state,
            shuffle=True, stratify=stratify,
        )
    except ValueError:
        if stratify is None:
            raise
        # Too few rows to give each class a test row: fall back to a plain split.
        stratify = None
        train, test = train_test_split(
            np.arange(n), test_size=test_fraction, train_size=train_size, random_state=random_state, shuffle=True
        )
    return np.sort(train), np.sort(test), stratify is not None


def _observed_moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A party's message for a federated mean: count and sum of its observed (non-NaN) values."""
    observed = ~np.isnan(x)
    return observed.sum(axis=0), np.where(observed, x, 0.0).sum(axis=0)


def _moments(x: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """A party's message for a federated variance: count, sums and sums of squares of its train rows."""
    return len(x), x.sum(axis=0), np.square(x).sum(axis=0)


def combine_moments(messages: Sequence[tuple[int, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, int]:
    """The server's side: mean and unbiased std from the parties' (count, sum, sum of squares)."""
    count = sum(m[0] for m in messages)
    total = np.sum([m[1] for m in messages], axis=0)
    squares = np.sum([m[2] for m in messages], axis=0)
    mean = total / count
    if count < 2:
        return mean, np.zeros_like(mean), count
    variance = np.maximum((squares - count * np.square(mean)) / (count - 1), 0.0)
    return mean, np.sqrt(variance), count


def _party_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    std = x.std(axis=0, ddof=1) if len(x) > 1 else np.zeros(x.shape[1])
    return mean, std


def _constant(x: np.ndarray) -> np.ndarray:
    """Columns constant on these rows."""
    return (x.max(axis=0) == x.min(axis=0)) if len(x) else np.ones(x.shape[1], dtype=bool)


def _scale(x: np.ndarray, mean: np.ndarray, std: np.ndarray, constant: np.ndarray) -> np.ndarray:
    scaled = (x - mean) / (std + STD_EPSILON)
    scaled[:, constant] = 0.0
    return scaled


def _by_column(names: Sequence[str], values: np.ndarray) -> dict[str, float]:
    return {name: float(v) for name, v in zip(names, values)}


def encode_parties(
    parties: Sequence[PartySplit],
    *,
    numeric: Sequence[str],
    categorical: Sequence[str],
    scaling: str,
    drop_first: bool = False,
    scale_all: bool = False,
    missing_indicators: bool = True,
) -> tuple[list[tuple[np.ndarray, np.ndarray]], tuple[str, ...], dict[str, Any]]:
    """One-hot encode, impute and scale every party's rows (see the module docstring).

    Returns float64 ``(train_x, test_x)`` per party, the feature names
    (numeric columns, then one-hot columns ``<col>_<value>``, then the
    ``<col>_missing`` indicators) and a JSON-serialisable description.
    ``drop_first`` drops each categorical column's first category (as
    ``pandas.get_dummies(drop_first=True)``); ``scale_all`` scales the one-hot
    and indicator columns too (FLamby scales every column).
    """
    import pandas as pd

    numeric, categorical = list(numeric), list(categorical)
    frames = [p.train for p in parties] + [p.test for p in parties]
    missing = [c for c in numeric + categorical if any(f[c].isna().any() for f in frames)] if missing_indicators else []
    categories = {c: sorted_values(pd.concat([f[c] for f in frames], ignore_index=True).tolist()) for c in categorical}
    one_hot = {c: cats[1:] if drop_first else cats for c, cats in categories.items()}
    names = list(numeric)
    for c in categorical:
        names += [f"{c}_{value_name(v)}" for v in one_hot[c]]
    names += [f"{c}_missing" for c in missing]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"feature names clash after encoding: {', '.join(duplicates)}; rename the columns")

    train_numeric = [p.train[numeric].to_numpy(dtype=np.float64, na_value=np.nan) for p in parties]
    # Imputation values for the numeric columns, one vector per party.
    imputed = [c for c in numeric if c in missing]
    imputed_idx = [numeric.index(c) for c in imputed]
    imputation: dict[str, Any] = {"columns": imputed}
    if scaling == "party":
        fills = []
        for x in train_numeric:
            count, total = _observed_moments(x)
            fills.append(np.divide(total, count, out=np.zeros(len(numeric)), where=count > 0))
        imputation["method"] = "mean of the party's own train rows (0 where the party observed none)"
        values: Any = {p.name: _by_column(imputed, f[imputed_idx]) for p, f in zip(parties, fills)}
    elif scaling == "federated":
        messages = [_observed_moments(x) for x in train_numeric]
        count = np.sum([m[0] for m in messages], axis=0)
        total = np.sum([m[1] for m in messages], axis=0)
        fill = np.divide(total, count, out=np.zeros(len(numeric)), where=count > 0)
        fills = [fill] * len(parties)
        imputation["method"] = "federated train mean (each party sends the sum and count of its observed values)"
        values = _by_column(imputed, fill[imputed_idx])
    else:
        fills = [np.zeros(len(numeric))] * len(parties)
        imputation["method"] = "zero"
        values = _by_column(imputed, np.zeros(len(imputed)))
    if imputed:
        imputation["values"] = values
    else:
        imputation["method"] = "none needed"

    def encode(frame, fill: np.ndarray) -> np.ndarray:
        blocks = []
        x = frame[numeric].to_numpy(dtype=np.float64, na_value=np.nan)
        blocks.append(np.where(np.isnan(x), fill, x))
        for c in categorical:
            column = frame[c]
            for v in one_hot[c]:
                blocks.append((column == v).fillna(False).to_numpy(dtype=np.float64)[:, None])
        for c in missing:
            blocks.append(frame[c].isna().to_numpy(dtype=np.float64)[:, None])
        return np.concatenate(blocks, axis=1) if blocks else np.zeros((len(frame), 0))

    encoded = [(encode(p.train, f), encode(p.test, f)) for p, f in zip(parties, fills)]

    scaled_idx = np.arange(len(names)) if scale_all else np.arange(len(numeric))
    scaled_names = [names[i] for i in scaled_idx]
    statistics: dict[str, Any] = {}
    if scaling != "none" and len(scaled_idx):
        if scaling == "party":
            for p, (tr, te) in zip(parties, encoded):
                mean, std = _party_stats(tr[:, scaled_idx])
                constant = _constant(tr[:, scaled_idx])
                tr[:, scaled_idx] = _scale(tr[:, scaled_idx], mean, std, constant)
                te[:, scaled_idx] = _scale(te[:, scaled_idx], mean, std, constant)
                statistics[p.name] = {"mean": _by_column(scaled_names, mean), "std": _by_column(scaled_names, std)}
        else:
            mean, std, count = combine_moments([_moments(tr[:, scaled_idx]) for tr, _ in encoded])
            # Constant over all parties' train rows (up to the rounding of sums of squares).
            constant = std <= 1e-7 * (np.abs(mean) + 1.0)
            for tr, te in encoded:
                tr[:, scaled_idx] = _scale(tr[:, scaled_idx], mean, std, constant)
                te[:, scaled_idx] = _scale(te[:, scaled_idx], mean, std, constant)
            statistics = {"mean": _by_column(scaled_names, mean), "std": _by_column(scaled_names, std), "count": int(count)}
    preprocessing = {
        "scaling": scaling,
        "scaled_columns": scaled_names if scaling != "none" else [],
        "std_epsilon": STD_EPSILON,
        "statistics": statistics,
        "imputation": imputation,
        "missing_indicator_columns": [f"{c}_missing" for c in missing],
        "one_hot": {c: [value_name(v) for v in cats] for c, cats in one_hot.items()},
        "one_hot_drop_first": drop_first,
        "numeric_columns": numeric,
        "categorical_columns": categorical,
    }
    if categorical:
        preprocessing["one_hot_note"] = "categories are the union over all parties' rows: parties share category names, not rows"
    return encoded, tuple(names), preprocessing


def assemble_source(
    name: str,
    parties: Sequence[PartySplit],
    encoded: Sequence[tuple[np.ndarray, np.ndarray]],
    class_names: tuple[str, ...],
    feature_names: tuple[str, ...],
    preprocessing: dict[str, Any],
) -> SourceData:
    """Concatenate the parties into one SourceData, party i = writer i."""
    width = len(feature_names)

    def stack(arrays: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(arrays).astype(np.float32) if arrays else np.zeros((0, width), np.float32)

    return SourceData(
        name=name,
        train_x=stack([tr for tr, _ in encoded]),
        train_y=np.concatenate([p.train_y for p in parties]).astype(np.int64),
        test_x=stack([te for _, te in encoded]),
        test_y=np.concatenate([p.test_y for p in parties]).astype(np.int64),
        class_names=class_names,
        train_writer=np.concatenate([np.full(len(p.train_y), i, dtype=np.int64) for i, p in enumerate(parties)]),
        test_writer=np.concatenate([np.full(len(p.test_y), i, dtype=np.int64) for i, p in enumerate(parties)]),
        writer_ids=tuple(p.name for p in parties),
        feature_names=feature_names,
        preprocessing=preprocessing,
    )


def _first_missing(series) -> int | None:
    missing = series.isna().to_numpy()
    return int(np.flatnonzero(missing)[0]) if missing.any() else None


def load_table(data_dir: str | None, seed: int = 0, options: SourceOptions | None = None) -> SourceData:
    """The ``table`` source: see the module docstring."""
    options = options or SourceOptions()
    if not data_dir:
        raise ConfigError("dataset 'table' needs --data-dir FILE (a .csv, .parquet or .pq file)")
    if not options.party_column or not options.label_column:
        raise ConfigError("dataset 'table' needs party_column and label_column (--party-column, --label-column)")
    path = Path(data_dir)
    frame = read_table(path)
    where = str(path)

    def row(i: int) -> str:
        return f"line {i + 2}" if TABLE_FORMATS[path.suffix.lower()] == "csv" else f"row {i}"

    roles = {options.party_column: "party", options.label_column: "label"}
    if options.split_column:
        roles.setdefault(options.split_column, "split")
    if options.party_column == options.label_column or options.split_column in (options.party_column, options.label_column):
        raise ConfigError("party_column, label_column and split_column must be different columns")
    for column, role in roles.items():
        if column not in frame.columns:
            raise DataError(f"{where}: no {role} column {column!r} (columns: {', '.join(frame.columns[:20])})")
    if options.feature_columns is not None:
        features = list(options.feature_columns)
        for column in features:
            if column in roles:
                raise ConfigError(f"feature column {column!r} is also the {roles[column]} column")
            if column not in frame.columns:
                raise DataError(f"{where}: no feature column {column!r} (columns: {', '.join(frame.columns[:20])})")
    else:
        features = [c for c in frame.columns if c not in roles]
    if not features:
        raise DataError(f"{where}: no feature columns besides {', '.join(repr(c) for c in roles)}")
    if options.categorical_columns is not None:
        for column in options.categorical_columns:
            if column not in frame.columns:
                raise DataError(f"{where}: no categorical column {column!r} (columns: {', '.join(frame.columns[:20])})")
            if column not in features:
                raise ConfigError(f"categorical column {column!r} is not one of the feature columns")
        categorical = [c for c in features if c in options.categorical_columns]
    else:
        categorical = [c for c in features if not is_numeric_column(frame[c])]
    numeric = [c for c in features if c not in categorical]

    columns = {c: numeric_values(frame[c], c, where, row) for c in numeric}
    table = frame[features].copy()
    for c in numeric:
        table[c] = columns[c]

    for column, role in ((options.label_column, "label"), (options.party_column, "party")):
        first = _first_missing(frame[column])
        if first is not None:
            raise DataError(f"{where}: {role} column {column!r} has an empty value ({row(first)})")
    label_values = sorted_values(frame[options.label_column].tolist())
    class_names = tuple(value_name(v) for v in label_values)
    if len(class_names) < 2:
        raise DataError(f"{where}: label column {options.label_column!r} has one class ({class_names[0]!r}); a classifier needs two or more")
    label_index = {v: i for i, v in enumerate(label_values)}
    labels = frame[options.label_column].map(label_index).to_numpy(dtype=np.int64)
    party_values = sorted_values(frame[options.party_column].tolist())
    party_names = [value_name(v) for v in party_values]
    party_of_row = frame[options.party_column].map({v: i for i, v in enumerate(party_values)}).to_numpy(dtype=np.int64)

    is_test = None
    if options.split_column:
        raw = frame[options.split_column]
        split = raw.astype(str).str.strip().str.lower()
        bad = ~split.isin(["train", "test"]).to_numpy() | raw.isna().to_numpy()
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{where}: split column {options.split_column!r} holds {raw.iloc[first]!r} ({row(first)}); "
                "its values must be train or test"
            )
        is_test = (split == "test").to_numpy()

    parties, stratified = [], {}
    for index, name in enumerate(party_names):
        rows = np.flatnonzero(party_of_row == index)
        if is_test is not None:
            train_rows, test_rows = rows[~is_test[rows]], rows[is_test[rows]]
        else:
            try:
                train_local, test_local, stratified[name] = split_party(labels[rows], options.test_fraction, seed)
            except ValueError:
                raise DataError(
                    f"{where}: party {name!r} (column {options.party_column!r}) has too few rows ({len(rows)}) "
                    f"to hold out test_fraction={options.test_fraction}"
                ) from None
            train_rows, test_rows = rows[train_local], rows[test_local]
        if len(train_rows) == 0:
            raise DataError(f"{where}: party {name!r} (column {options.party_column!r}) has no training rows")
        parties.append(
            PartySplit(name, table.iloc[train_rows], table.iloc[test_rows], labels[train_rows], labels[test_rows])
        )

    encoded, feature_names, preprocessing = encode_parties(
        parties, numeric=numeric, categorical=categorical, scaling=options.scaling
    )
    preprocessing["file"] = where
    preprocessing["label_column"] = options.label_column
    preprocessing["party_column"] = options.party_column
    if is_test is not None:
        preprocessing["split"] = {"column": options.split_column}
    else:
        preprocessing["split"] = {
            "method": "seeded split per party (sklearn train_test_split)",
            "test_fraction": options.test_fraction,
            "random_state": seed,
            "stratified": stratified,
        }
    return assemble_source("table", parties, encoded, class_names, feature_names, preprocessing)
