from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedlight.data import build_federated_data, load_source
from fedlight.data.sources import SourceOptions
from fedlight.data.sources.table import combine_moments
from fedlight.errors import ConfigError, DataError

NUMERIC = ["height", "weight"]


def _frame(seed=0):
    """Three parties with different feature distributions and a fixed train/test split."""
    rng = np.random.default_rng(seed)
    rows = []
    for party, (n, shift) in {"north": (20, 0.0), "south": (14, 5.0), "east": (9, -3.0)}.items():
        for i in range(n):
            rows.append({
                "site": party,
                "height": rng.normal(170 + shift, 8),
                "weight": rng.normal(70 - shift, 5),
                "color": {"north": ["red", "green"], "south": ["blue"], "east": ["red", "blue"]}[party][i % (1 if party == "south" else 2)],
                "outcome": ["no", "yes"][i % 2],
                "fold": "test" if i % 3 == 0 else "train",
            })
    return pd.DataFrame(rows)


def _write(frame, path):
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, engine="pyarrow", index=False)
    return str(path)


def _options(**kw):
    base = dict(party_column="site", label_column="outcome", split_column="fold")
    base.update(kw)
    return SourceOptions(**base)


@pytest.fixture
def csv_file(tmp_path):
    return _write(_frame(), tmp_path / "people.csv")


def test_csv_and_parquet_load_the_same_parties(tmp_path):
    frame = _frame()
    a = load_source("table", _write(frame, tmp_path / "t.csv"), options=_options())
    b = load_source("table", _write(frame, tmp_path / "t.parquet"), options=_options())
    c = load_source("table", _write(frame, tmp_path / "t.pq"), options=_options())
    assert a.writer_ids == ("east", "north", "south")
    assert a.class_names == ("no", "yes")
    assert a.feature_names == ("height", "weight", "color_blue", "color_green", "color_red")
    assert a.input_shape == (5,) and a.train_x.dtype == np.float32
    for other in (b, c):
        np.testing.assert_allclose(a.train_x, other.train_x, atol=1e-6)
        np.testing.assert_array_equal(a.test_writer, other.test_writer)
        assert a.feature_names == other.feature_names
    # The split column decides the rows: one in three of each party is a test row.
    for w, name in enumerate(a.writer_ids):
        party = frame[frame.site == name]
        assert (a.train_writer == w).sum() == (party.fold == "train").sum()
        assert (a.test_writer == w).sum() == (party.fold == "test").sum()


def test_party_scaling_uses_each_partys_own_train_statistics(csv_file):
    frame = _frame()
    src = load_source("table", csv_file, options=_options(scaling="party"))
    for w, name in enumerate(src.writer_ids):
        train = src.train_x[src.train_writer == w][:, :2]
        np.testing.assert_allclose(train.mean(axis=0), 0.0, atol=1e-5)
        np.testing.assert_allclose(train.std(axis=0, ddof=1), 1.0, atol=1e-5)
        raw_train = frame[(frame.site == name) & (frame.fold == "train")][NUMERIC].to_numpy()
        raw_test = frame[(frame.site == name) & (frame.fold == "test")][NUMERIC].to_numpy()
        expected = (raw_test - raw_train.mean(0)) / (raw_train.std(0, ddof=1) + 1e-9)
        np.testing.assert_allclose(src.test_x[src.test_writer == w][:, :2], expected, rtol=1e-5, atol=1e-5)
        stats = src.preprocessing["statistics"][name]
        assert stats["mean"]["height"] == pytest.approx(raw_train[:, 0].mean())
    # One-hot columns are not scaled.
    assert set(np.unique(src.train_x[:, 2:])) == {0.0, 1.0}
    assert src.preprocessing["scaling"] == "party" and src.preprocessing["scaled_columns"] == NUMERIC


def test_federated_scaling_equals_pooled_train_statistics(csv_file):
    frame = _frame()
    src = load_source("table", csv_file, options=_options(scaling="federated"))
    pooled = frame[frame.fold == "train"][NUMERIC].to_numpy()
    mean, std = pooled.mean(axis=0), pooled.std(axis=0, ddof=1)
    stats = src.preprocessing["statistics"]
    assert stats["count"] == len(pooled)
    assert [stats["mean"][c] for c in NUMERIC] == pytest.approx(mean.tolist(), rel=1e-12)
    assert [stats["std"][c] ** 2 for c in NUMERIC] == pytest.approx(pooled.var(axis=0, ddof=1).tolist(), rel=1e-9)
    np.testing.assert_allclose(src.train_x[:, :2].mean(axis=0), 0.0, atol=1e-5)
    # ... which is not what each party sees under party scaling: the parties differ.
    north = src.train_x[src.train_writer == src.writer_ids.index("north")][:, :2]
    south = src.train_x[src.train_writer == src.writer_ids.index("south")][:, :2]
    assert abs(north[:, 0].mean() - south[:, 0].mean()) > 0.3
    # Test rows use the same federated statistics.
    raw_test = pd.concat([frame[(frame.site == n) & (frame.fold == "test")] for n in src.writer_ids])[NUMERIC].to_numpy()
    np.testing.assert_allclose(src.test_x[:, :2], (raw_test - mean) / (std + 1e-9), rtol=1e-5, atol=1e-5)


def test_combine_moments_is_the_pooled_mean_and_unbiased_std():
    rng = np.random.default_rng(1)
    parts = [rng.normal(3, 2, size=(n, 4)) for n in (5, 17, 2)]
    mean, std, count = combine_moments([(len(p), p.sum(0), (p**2).sum(0)) for p in parts])
    pooled = np.concatenate(parts)
    assert count == 24
    np.testing.assert_allclose(mean, pooled.mean(0))
    np.testing.assert_allclose(std, pooled.std(0, ddof=1))


def test_no_scaling_keeps_raw_values(csv_file):
    frame = _frame()
    src = load_source("table", csv_file, options=_options(scaling="none"))
    w = src.writer_ids.index("east")
    raw = frame[(frame.site == "east") & (frame.fold == "train")][NUMERIC].to_numpy()
    np.testing.assert_allclose(src.train_x[src.train_writer == w][:, :2], raw, rtol=1e-6)


def test_missing_values_are_imputed_with_indicators(tmp_path):
    frame = _frame()
    frame.loc[[1, 2, 25], "weight"] = np.nan  # north train rows 1, 2 and south train row 25
    frame.loc[30, "color"] = None
    path = _write(frame, tmp_path / "gaps.csv")
    for scaling in ("party", "federated", "none"):
        src = load_source("table", path, options=_options(scaling=scaling))
        names = src.feature_names
        assert names[-2:] == ("weight_missing", "color_missing") and "height_missing" not in names
        assert src.preprocessing["missing_indicator_columns"] == ["weight_missing", "color_missing"]
        assert src.preprocessing["imputation"]["columns"] == ["weight"]
        indicator = src.train_x[:, names.index("weight_missing")]
        assert indicator.sum() == 3 and set(np.unique(indicator)) == {0.0, 1.0}
        weight = src.train_x[:, names.index("weight")]
        assert not np.isnan(src.train_x).any()
        if scaling == "none":
            np.testing.assert_array_equal(weight[indicator == 1], 0.0)
        else:  # imputed with the mean the column is then centred on
            np.testing.assert_allclose(weight[indicator == 1], 0.0, atol=1e-5)
        color_missing = src.train_x[:, names.index("color_missing")] if 30 in frame.index else None
        row = src.train_x[color_missing == 1]
        assert len(row) == 1 and row[0, [names.index(c) for c in names if c.startswith("color_") and c != "color_missing"]].sum() == 0
    # The imputed values themselves: the party's observed train mean, or the pooled one.
    party = load_source("table", path, options=_options(scaling="party")).preprocessing["imputation"]["values"]
    north = frame[(frame.site == "north") & (frame.fold == "train")]["weight"]
    assert party["north"]["weight"] == pytest.approx(north.mean())  # pandas skips NaN
    federated = load_source("table", path, options=_options(scaling="federated")).preprocessing["imputation"]["values"]
    assert federated["weight"] == pytest.approx(frame[frame.fold == "train"]["weight"].mean())


def test_one_hot_categories_are_the_union_across_parties(csv_file):
    src = load_source("table", csv_file, options=_options())
    south = src.train_x[src.train_writer == src.writer_ids.index("south")]
    names = src.feature_names
    # south only has blue; its rows still get every column of the union
    assert south[:, names.index("color_blue")].tolist() == [1.0] * len(south)
    assert south[:, names.index("color_red")].sum() == 0 and south[:, names.index("color_green")].sum() == 0
    assert src.preprocessing["one_hot"] == {"color": ["blue", "green", "red"]}
    # A numeric column can be declared categorical.
    frame = _frame()
    frame["grade"] = [1, 2, 3] * (len(frame) // 3) + [1] * (len(frame) % 3)
    path = _write(frame, Path(csv_file).with_name("grades.csv"))
    src = load_source("table", path, options=_options(categorical_columns=("color", "grade")))
    assert [n for n in src.feature_names if n.startswith("grade")] == ["grade_1", "grade_2", "grade_3"]


def test_feature_columns_select_and_order(csv_file):
    src = load_source("table", csv_file, options=_options(feature_columns=("weight",)))
    assert src.feature_names == ("weight",) and src.input_shape == (1,)


def test_multiclass_labels_are_sorted_class_names(tmp_path):
    frame = _frame()
    frame["outcome"] = [["mild", "none", "severe"][i % 3] for i in range(len(frame))]
    src = load_source("table", _write(frame, tmp_path / "m.csv"), options=_options())
    assert src.class_names == ("mild", "none", "severe")
    first = frame[(frame.site == "east") & (frame.fold == "train")]["outcome"].iloc[0]
    assert src.class_names[src.train_y[src.train_writer == 0][0]] == first
    frame["outcome"] = [10, 2, 33][0:1] * len(frame)
    frame.loc[::2, "outcome"] = 2
    src = load_source("table", _write(frame, tmp_path / "n.csv"), options=_options())
    assert src.class_names == ("2", "10")  # numeric labels sort as numbers


def test_seeded_stratified_split_per_party(tmp_path):
    frame = _frame().drop(columns="fold")
    path = _write(frame, tmp_path / "nosplit.csv")
    opts = _options(split_column=None)
    a = load_source("table", path, seed=0, options=opts)
    b = load_source("table", path, seed=0, options=opts)
    c = load_source("table", path, seed=1, options=opts)
    np.testing.assert_array_equal(a.train_x, b.train_x)
    assert not np.array_equal(a.test_y, c.test_y) or not np.allclose(a.test_x, c.test_x)
    for w, name in enumerate(a.writer_ids):
        n = (frame.site == name).sum()
        n_test = int(np.ceil(0.34 * n))
        assert (a.test_writer == w).sum() == n_test and (a.train_writer == w).sum() == n - n_test
        # stratified: both classes in both halves
        assert set(a.train_y[a.train_writer == w]) == {0, 1} and set(a.test_y[a.test_writer == w]) == {0, 1}
    assert a.preprocessing["split"]["stratified"] == {"east": True, "north": True, "south": True}
    half = load_source("table", path, options=_options(split_column=None, test_fraction=0.5))
    assert (half.test_writer == half.writer_ids.index("north")).sum() == 10


def test_constant_column_becomes_zero(tmp_path):
    frame = _frame()
    frame["const"] = 7.25
    frame.loc[frame.site == "south", "const"] = 1.0
    path = _write(frame, tmp_path / "const.csv")
    src = load_source("table", path, options=_options(scaling="party"))
    col = src.feature_names.index("const")
    np.testing.assert_array_equal(src.train_x[:, col], 0.0)
    np.testing.assert_array_equal(src.test_x[:, col], 0.0)
    fed = load_source("table", path, options=_options(scaling="federated"))
    assert np.abs(fed.train_x[:, col]).max() > 0.5  # not constant across parties: it carries information


def test_natural_partition_gives_one_client_per_party_and_test_clients(csv_file):
    src = load_source("table", csv_file, options=_options())
    data = build_federated_data(src, partition="natural", val_fraction=0.0, seed=0)
    assert [c.name for c in data.clients] == ["east", "north", "south"]
    assert data.input_shape == (5,) and data.clients[0].train_x.shape[1:] == (5,)
    assert sum(c.num_train for c in data.clients) == len(src.train_y)
    np.testing.assert_array_equal(data.test_client.numpy(), src.test_writer)
    assert data.feature_names == src.feature_names and data.preprocessing["scaling"] == "party"


# --- bad input: one-line DataError naming the file and the column -------------------------------

def _bad_cases():
    def missing_file(tmp):
        return str(tmp / "absent.csv"), _options(), ["absent.csv"]

    def unknown_extension(tmp):
        (tmp / "t.xlsx").write_text("x")
        return str(tmp / "t.xlsx"), _options(), ["t.xlsx", ".xlsx"]

    def unreadable_parquet(tmp):
        (tmp / "t.parquet").write_bytes(b"this is not parquet")
        return str(tmp / "t.parquet"), _options(), ["t.parquet", "cannot read"]

    def column(role, **kw):
        def case(tmp):
            return _write(_frame(), tmp / "t.csv"), _options(**kw), ["t.csv", kw[f"{role}_column"] if role != "feature" else "age"]
        return case

    def missing_feature(tmp):
        return _write(_frame(), tmp / "t.csv"), _options(feature_columns=("height", "age")), ["t.csv", "'age'"]

    def one_class(tmp):
        frame = _frame()
        frame["outcome"] = "yes"
        return _write(frame, tmp / "t.csv"), _options(), ["t.csv", "'outcome'", "one class"]

    def no_train_rows(tmp):
        frame = _frame()
        frame.loc[frame.site == "east", "fold"] = "test"
        return _write(frame, tmp / "t.csv"), _options(), ["t.csv", "'east'", "'site'", "no training rows"]

    def non_numeric(tmp):
        frame = _frame()
        frame["height"] = frame["height"].astype(object)
        frame.loc[5, "height"] = "tall"
        return _write(frame, tmp / "t.csv"), _options(categorical_columns=("color",)), ["t.csv", "'height'", "'tall'", "line 7"]

    def non_numeric_inferred(tmp):  # a typo in a column of numbers is reported, not one-hot encoded
        frame = _frame()
        frame["weight"] = frame["weight"].astype(object)
        frame.loc[3, "weight"] = "7O.5"
        return _write(frame, tmp / "t.csv"), _options(), ["t.csv", "'weight'", "'7O.5'"]

    def bad_split(tmp):
        frame = _frame()
        frame.loc[4, "fold"] = "validation"
        return _write(frame, tmp / "t.csv"), _options(), ["t.csv", "'fold'", "'validation'"]

    def too_few_rows(tmp):
        frame = _frame().drop(columns="fold")
        frame = pd.concat([frame, frame.iloc[[0]].assign(site="tiny")])
        return _write(frame, tmp / "t.csv"), _options(split_column=None), ["t.csv", "'tiny'", "'site'"]

    return {
        "missing file": missing_file,
        "unknown extension": unknown_extension,
        "unreadable": unreadable_parquet,
        "party column": column("party", party_column="hospital"),
        "label column": column("label", label_column="diagnosis"),
        "split column": column("split", split_column="set"),
        "feature column": missing_feature,
        "one class": one_class,
        "no train rows": no_train_rows,
        "non-numeric": non_numeric,
        "non-numeric inferred": non_numeric_inferred,
        "bad split values": bad_split,
        "too few rows": too_few_rows,
    }


@pytest.mark.parametrize("case", list(_bad_cases()))
def test_bad_input_is_a_one_line_data_error(tmp_path, case):
    path, options, expected = _bad_cases()[case](tmp_path)
    with pytest.raises(DataError) as info:
        load_source("table", path, options=options)
    message = str(info.value)
    assert "\n" not in message
    for text in expected:
        assert text in message, (text, message)


def test_table_needs_its_columns_and_a_file(csv_file):
    with pytest.raises(ConfigError, match="party_column and label_column"):
        load_source("table", csv_file, options=SourceOptions(label_column="outcome"))
    with pytest.raises(ConfigError, match="needs --data-dir"):
        load_source("table", None, options=_options())
    with pytest.raises(ConfigError, match="also the label column"):
        load_source("table", csv_file, options=_options(feature_columns=("height", "outcome")))
    with pytest.raises(ConfigError, match="scaling must be one of"):
        SourceOptions(scaling="global")
    with pytest.raises(ConfigError, match="test_fraction"):
        SourceOptions(test_fraction=1.5)
    assert SourceOptions(feature_columns=["a", "b"]).feature_columns == ("a", "b")
