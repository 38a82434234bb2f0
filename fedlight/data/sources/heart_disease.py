"""UCI Heart Disease, four hospitals: ``--dataset heart_disease --data-dir DIR``.

``DIR`` holds ``raw/processed.{cleveland,hungarian,switzerland,va}.data`` (or
the four files directly): UCI's comma-separated files without a header, ``?``
= missing. The parties are the hospitals in FLamby's centre order (cleveland,
hungarian, switzerland, va); the label is ``num > 0`` (heart disease).

Train/test split, both modes: FLamby's, fixed whatever the run seed:
per hospital, ``train_test_split(np.arange(n), test_size=1 - 0.66,
train_size=0.66, random_state=43, shuffle=True)``, stratified on the label when
both classes have more than 2 rows.

``heart_disease_mode``:

* ``flamby`` (default): FLamby's Fed-Heart-Disease exactly. Drop slope, ca,
  thal; drop every row with a missing value (740 rows left); one-hot cp and
  restecg with ``drop_first`` over the four hospitals together (13 features:
  age, sex, trestbps, chol, fbs, thalach, exang, oldpeak, cp_2, cp_3, cp_4,
  restecg_1, restecg_2); under ``party`` scaling z-score every column with the
  hospital's train mean and unbiased std + 1e-9. Train/test counts 199/104,
  172/89, 30/16, 85/45. (Statistics are computed in float64, FLamby's in
  float32; the results agree to about 1e-6.)
* ``impute``: every row (920) and all 13 columns. The hidden zeros
  (``chol == 0``, ``trestbps == 0``) count as missing, and the table source's
  preprocessing imputes them with ``<col>_missing`` indicators (cp, restecg,
  slope and thal one-hot encoded, without ``drop_first``; numeric columns
  scaled). The hospitals then differ in missingness: Switzerland has no
  cholesterol at all.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedlight.data.sources import SourceData, SourceOptions
from fedlight.data.sources.table import PartySplit, assemble_source, encode_parties, split_party
from fedlight.errors import ConfigError, DataError

HOSPITALS = ("cleveland", "hungarian", "switzerland", "va")
COLUMNS = (
    "age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalach", "exang", "oldpeak", "slope", "ca", "thal", "num",
)
FLAMBY_DROPPED = ("slope", "ca", "thal")
FLAMBY_CATEGORICAL = ("cp", "restecg")
IMPUTE_CATEGORICAL = ("cp", "restecg", "slope", "thal")
HIDDEN_ZEROS = ("trestbps", "chol")
TRAIN_FRACTION = 0.66  # FLamby's
SPLIT_SEED = 43  # FLamby's, independent of the run seed
CLASS_NAMES = ("no disease", "disease")


def _raw_dir(data_dir: str) -> Path:
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"heart_disease data directory not found: {root}")
    for candidate in (root / "raw", root):
        if all((candidate / f"processed.{h}.data").is_file() for h in HOSPITALS):
            return candidate
    missing = [f"processed.{h}.data" for h in HOSPITALS if not (root / "raw" / f"processed.{h}.data").is_file()]
    raise DataError(f"{root / 'raw'}: missing {', '.join(missing)}")


def _read_hospital(path: Path):
    import pandas as pd

    try:
        frame = pd.read_csv(path, header=None, na_values=["?"])
    except Exception as exc:  # parser, Unicode and OS errors all mean "cannot read"
        raise DataError(f"cannot read {path}: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}") from None
    if frame.shape[1] != len(COLUMNS):
        raise DataError(f"{path}: expected {len(COLUMNS)} comma-separated columns, found {frame.shape[1]}")
    frame.columns = list(COLUMNS)
    for column in COLUMNS:
        converted = pd.to_numeric(frame[column], errors="coerce")
        bad = frame[column].notna().to_numpy() & converted.isna().to_numpy()
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise DataError(f"{path}: column {column!r} holds {frame[column].iloc[first]!r} (line {first + 1})")
        frame[column] = converted.astype("float64")
    return frame


def load_heart_disease(data_dir: str | None, seed: int = 0, options: SourceOptions | None = None) -> SourceData:
    """The ``heart_disease`` source: see the module docstring. ``seed`` does not change the split."""
    options = options or SourceOptions()
    if not data_dir:
        raise ConfigError("dataset 'heart_disease' needs --data-dir (the directory holding raw/processed.*.data)")
    raw = _raw_dir(data_dir)
    flamby = options.heart_disease_mode == "flamby"
    features = [c for c in COLUMNS[:-1] if not (flamby and c in FLAMBY_DROPPED)]
    categorical = list(FLAMBY_CATEGORICAL if flamby else IMPUTE_CATEGORICAL)
    numeric = [c for c in features if c not in categorical]
    parties, kept, stratified = [], {}, {}
    for hospital in HOSPITALS:
        frame = _read_hospital(raw / f"processed.{hospital}.data")
        if flamby:
            frame = frame.drop(columns=list(FLAMBY_DROPPED)).dropna(axis=0).reset_index(drop=True)
        else:
            for column in HIDDEN_ZEROS:
                frame.loc[frame[column] == 0, column] = np.nan
        kept[hospital] = len(frame)
        labels = (frame["num"] > 0).to_numpy(dtype=np.int64)
        train, test, stratified[hospital] = split_party(labels, 1.0 - TRAIN_FRACTION, SPLIT_SEED, train_size=TRAIN_FRACTION)
        if len(train) == 0:
            raise DataError(f"{raw / f'processed.{hospital}.data'}: no training rows")
        table = frame[features]
        parties.append(PartySplit(hospital, table.iloc[train], table.iloc[test], labels[train], labels[test]))
    encoded, feature_names, preprocessing = encode_parties(
        parties, numeric=numeric, categorical=categorical, scaling=options.scaling,
        drop_first=flamby, scale_all=flamby, missing_indicators=not flamby,
    )
    preprocessing.update(
        mode=options.heart_disease_mode,
        data_dir=str(raw),
        label="num > 0",
        rows_kept=kept,
        split={
            "method": "FLamby: train_test_split per hospital, train_size 0.66",
            "random_state": SPLIT_SEED,
            "stratified": stratified,
        },
    )
    if flamby:
        preprocessing["dropped_columns"] = list(FLAMBY_DROPPED)
        preprocessing["dropped_rows"] = "every row with a missing value"
    else:
        preprocessing["hidden_zeros_as_missing"] = list(HIDDEN_ZEROS)
    return assemble_source("heart_disease", parties, encoded, CLASS_NAMES, feature_names, preprocessing)
