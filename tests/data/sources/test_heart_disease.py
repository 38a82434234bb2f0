import numpy as np
import pytest

from fedlight.data import build_federated_data, load_source
from fedlight.data.sources import SourceOptions
from fedlight.errors import DataError
from tests.conftest import REPO

HEART_DIR = REPO.parent / "shared" / "data" / "heart_disease"
requires_heart = pytest.mark.skipif(
    not (HEART_DIR / "raw").is_dir(), reason=f"UCI heart disease data not found at {HEART_DIR / 'raw'}"
)
HOSPITALS = ("cleveland", "hungarian", "switzerland", "va")


def _flamby_reference():
    """FLamby's HeartDiseaseRaw (flamby/datasets/fed_heart_disease/dataset.py), transcribed, in centre order."""
    import pandas as pd
    import torch
    from sklearn.model_selection import train_test_split

    features, labels, centers, sets = pd.DataFrame(), pd.DataFrame(), [], []
    for center, name in enumerate(HOSPITALS):
        df = pd.read_csv(HEART_DIR / "raw" / f"processed.{name}.data", header=None)
        df = df.replace("?", np.nan).drop([10, 11, 12], axis=1).dropna(axis=0)
        df = df.apply(pd.to_numeric)
        center_x, center_y = df.iloc[:, :-1], df.iloc[:, -1]
        features = pd.concat((features, center_x), ignore_index=True)
        labels = pd.concat((labels, center_y), ignore_index=True)
        centers += [center] * center_x.shape[0]
        nb = int(center_x.shape[0])
        current = center_y.where(center_y == 0, 1)
        levels = np.unique(current)
        stratify = current if len(levels) > 1 and all((current == lev).sum() > 2 for lev in levels) else None
        _, test_idx = train_test_split(np.arange(nb), test_size=1.0 - 0.66, train_size=0.66, random_state=43,
                                       shuffle=True, stratify=stratify)
        sets += ["test" if i in test_idx else "train" for i in range(nb)]
    x = torch.from_numpy(pd.get_dummies(features, columns=[2, 6], drop_first=True).values.astype(np.float32))
    y = (labels.values[:, 0] > 0).astype(np.int64)
    centers, sets = np.array(centers), np.array(sets)
    out = np.empty_like(x.numpy())
    for center in range(4):
        train = torch.from_numpy((centers == center) & (sets == "train"))
        mean, std = x[train].mean(axis=0), x[train].std(axis=0)
        rows = torch.from_numpy(centers == center)
        out[rows.numpy()] = ((x[rows] - mean) / (std + 1e-9)).numpy()
    return out, y, centers, sets


@requires_heart
def test_flamby_mode_counts_and_features():
    src = load_source("heart_disease", str(HEART_DIR))
    assert src.writer_ids == HOSPITALS
    assert src.input_shape == (13,) and len(src.feature_names) == 13
    assert src.feature_names[-5:] == ("cp_2", "cp_3", "cp_4", "restecg_1", "restecg_2")
    assert np.bincount(src.train_writer).tolist() == [199, 172, 30, 85]
    assert np.bincount(src.test_writer).tolist() == [104, 89, 16, 45]
    # The README's per-hospital train/test label counts (Switzerland trains without a negative).
    train_neg = [int((src.train_y[src.train_writer == w] == 0).sum()) for w in range(4)]
    test_neg = [int((src.test_y[src.test_writer == w] == 0).sum()) for w in range(4)]
    assert train_neg == [108, 107, 0, 19] and test_neg == [56, 56, 1, 10]
    assert src.preprocessing["split"]["stratified"] == {"cleveland": True, "hungarian": True, "switzerland": False, "va": True}
    # Per-hospital z-scores: mean 0 on each hospital's train rows; Switzerland's chol (all 0) stays 0.
    for w in range(4):
        np.testing.assert_allclose(src.train_x[src.train_writer == w].mean(axis=0), 0.0, atol=1e-5)
    chol = src.feature_names.index("chol")
    assert np.all(src.train_x[src.train_writer == 2, chol] == 0) and np.all(src.test_x[src.test_writer == 2, chol] == 0)


@requires_heart
def test_flamby_mode_matches_a_transcription_of_flambys_code():
    x, y, centers, sets = _flamby_reference()
    src = load_source("heart_disease", str(HEART_DIR))
    for w in range(4):
        train, test = (centers == w) & (sets == "train"), (centers == w) & (sets == "test")
        np.testing.assert_allclose(src.train_x[src.train_writer == w], x[train], atol=2e-5)
        np.testing.assert_allclose(src.test_x[src.test_writer == w], x[test], atol=2e-5)
        np.testing.assert_array_equal(src.train_y[src.train_writer == w], y[train])
        np.testing.assert_array_equal(src.test_y[src.test_writer == w], y[test])


@requires_heart
def test_split_ignores_the_run_seed_and_federated_scaling_pools_statistics():
    a = load_source("heart_disease", str(HEART_DIR), seed=0)
    b = load_source("heart_disease", str(HEART_DIR), seed=7)
    np.testing.assert_array_equal(a.test_x, b.test_x)
    fed = load_source("heart_disease", str(HEART_DIR), options=SourceOptions(scaling="federated"))
    raw = load_source("heart_disease", str(HEART_DIR), options=SourceOptions(scaling="none"))
    mean, std = raw.train_x.astype(np.float64).mean(0), raw.train_x.astype(np.float64).std(0, ddof=1)
    np.testing.assert_allclose(fed.train_x, (raw.train_x - mean) / (std + 1e-9), atol=1e-5)
    assert set(np.unique(raw.train_x[:, -5:])) == {0.0, 1.0}


@requires_heart
def test_impute_mode_keeps_every_row_and_marks_hidden_zeros_missing():
    src = load_source("heart_disease", str(HEART_DIR), options=SourceOptions(heart_disease_mode="impute"))
    assert len(src.train_y) + len(src.test_y) == 920
    rows = np.bincount(src.train_writer) + np.bincount(src.test_writer)
    assert rows.tolist() == [303, 294, 123, 200]
    names = src.feature_names
    for column in ("slope_1", "thal_7", "ca", "chol_missing", "trestbps_missing", "ca_missing"):
        assert column in names
    assert not np.isnan(src.train_x).any() and not np.isnan(src.test_x).any()
    chol_missing = names.index("chol_missing")
    swiss = src.writer_ids.index("switzerland")
    assert np.all(src.train_x[src.train_writer == swiss, chol_missing] == 1)  # no cholesterol at all
    assert np.all(src.train_x[src.train_writer == 0, chol_missing] == 0)  # Cleveland has every value
    va = src.writer_ids.index("va")
    va_missing = np.concatenate([src.train_x[src.train_writer == va, chol_missing], src.test_x[src.test_writer == va, chol_missing]])
    assert va_missing.sum() == 49 + 7  # 49 hidden zeros + 7 '?'
    assert src.preprocessing["mode"] == "impute" and "chol" in src.preprocessing["imputation"]["columns"]


@requires_heart
def test_one_client_per_hospital_with_its_own_test_rows():
    src = load_source("heart_disease", str(HEART_DIR))
    data = build_federated_data(src, partition="natural", seed=0)
    assert [c.name for c in data.clients] == list(HOSPITALS)
    assert np.bincount(data.test_client.numpy()).tolist() == [104, 89, 16, 45]


def test_missing_data_dir_names_the_path(tmp_path):
    with pytest.raises(DataError, match="not found: .*nowhere"):
        load_source("heart_disease", str(tmp_path / "nowhere"))
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "processed.cleveland.data").write_text("63.0,1.0,1.0,145.0,233.0,1.0,2.0,150.0,0.0,2.3,3.0,0.0,6.0,0\n")
    with pytest.raises(DataError, match=r"raw: missing processed\.hungarian\.data"):
        load_source("heart_disease", str(tmp_path))
