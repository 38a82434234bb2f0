"""A user's model and table through the CLI, as a user runs them: CSV and Parquet, nn.Module and LightningModule."""

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from fedlight.cli import main

RUN = ["run", "--dataset", "table", "--party-column", "site", "--label-column", "outcome", "--rounds", "2",
       "--clients-per-round", "2", "--batch-size", "8", "--lr", "0.1", "--no-progress", "--registered-model", ""]


def write_table(path, rows=80, seed=0):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "site": np.repeat(["north", "south"], rows // 2),
        "age": rng.normal(50, 10, rows).round(1),
        "dose": rng.normal(5, 2, rows),
        "arm": rng.choice(["a", "b", "c"], rows),
    })
    frame.loc[3, "dose"] = np.nan
    frame["outcome"] = np.where(frame["age"] + 5 * (frame["arm"] == "a") > 52, "sick", "well")
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return frame


@pytest.mark.parametrize("model", ["tests.test_user_models:PlainNet", "tests.test_user_models:UserLit"])
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_users_model_on_a_users_table(tmp_path, tracking_uri, suffix, model):
    table = tmp_path / f"trial{suffix}"
    write_table(table)
    out = tmp_path / "summary.json"
    assert main([*RUN, "--data-dir", str(table), "--model", model, "--tracking-uri", tracking_uri,
                 "--output-json", str(out)]) == 0
    summary = json.loads(out.read_text())
    final = summary["final"]
    assert {"balanced_accuracy", "roc_auc", "party_mean_accuracy", "accuracy_party/north", "accuracy_party/south"} <= set(final)
    assert final["party_mean_accuracy"] == pytest.approx((final["accuracy_party/north"] + final["accuracy_party/south"]) / 2)
    client = mlflow.MlflowClient(tracking_uri)
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["model"] in ("PlainNet", "UserLit")
    preprocessing = json.loads(Path(client.download_artifacts(run.info.run_id, "data/preprocessing.json", str(tmp_path))).read_text())
    assert preprocessing, "the preprocessing was not logged"
    assert "dose_missing" in json.dumps(preprocessing) and "arm" in json.dumps(preprocessing)


@pytest.mark.parametrize(
    "change, flags, message",
    [
        (None, ["--label-column", "nope"], "nope"),
        ("one_class", [], "outcome"),
        ("text_in_numeric", ["--feature-columns", "age,dose", "--categorical-columns", ""], "dose"),
        ("unreadable", [], "trial.csv"),
    ],
)
def test_bad_tables_are_one_line_and_leave_no_run(tmp_path, tracking_uri, capsys, change, flags, message):
    table = tmp_path / "trial.csv"
    frame = write_table(table)
    if change == "one_class":
        frame.assign(outcome="sick").to_csv(table, index=False)
    elif change == "text_in_numeric":
        frame.astype({"dose": object}).assign(dose=lambda f: f["dose"].where(f.index != 5, "five")).to_csv(table, index=False)
    elif change == "unreadable":
        table.write_bytes(b"\x00\xff\xfe garbage \x00\n\x01")
    code = main([*RUN, "--data-dir", str(table), "--model", "logreg", "--tracking-uri", tracking_uri, *flags])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("fedlight: error: ") and message in err, err
    mlflow.set_tracking_uri(tracking_uri)
    assert mlflow.search_runs(search_all_experiments=True).empty


def test_moon_with_a_model_without_embed_head_is_refused_before_any_run(tmp_path, tracking_uri, capsys):
    table = tmp_path / "trial.csv"
    write_table(table)
    code = main([*RUN, "--data-dir", str(table), "--model", "tests.test_user_models:PlainNet", "--strategy", "moon",
                 "--tracking-uri", tracking_uri])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "embed" in err and "head" in err
    mlflow.set_tracking_uri(tracking_uri)
    assert mlflow.search_runs(search_all_experiments=True).empty
