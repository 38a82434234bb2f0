"""What a run leaves in MLflow for its UI: the experiment's kind, a run name, headline metrics, the per-party table, the dataset."""

import json

import mlflow
import pytest

from fedlight.cli import main
from fedlight.config import build_config
from fedlight.experiment import load_federated_data, run_experiment
from fedlight.tracking import (
    CHART_VIEW_KEY,
    EXPERIMENT_KIND_TAG,
    HEADLINE_METRICS,
    MODEL_TRAINING_KIND,
    PARTY_METRICS_ARTIFACT,
    MlflowRun,
    default_run_name,
    ensure_experiment,
    federated_dataset,
)
from tests.conftest import make_tiny_federated

TINY = {"data": {"dataset": "digits", "num_clients": 4, "noisy_client_fraction": 0.5, "label_noise": 1.0},
        "training": {"rounds": 2, "clients_per_round": 2, "batch_size": 32},
        "strategy": {"name": "adaptive"}}


@pytest.fixture(autouse=True)
def _no_leaked_tracking_uri(monkeypatch):
    """mlflow.set_tracking_uri exports the test's URI into os.environ; later tests must not inherit it."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    mlflow.set_tracking_uri(None)


def _tiny(tracking_uri, **tracking):
    return build_config({**TINY, "tracking": {"experiment": "ui", "tracking_uri": tracking_uri, "registered_model": None,
                                              **tracking}})


@pytest.mark.parametrize(
    "sections, name",
    [
        ({}, "fedavg-digits-s0"),
        ({"strategy": {"name": "adaptive"}, "data": {"dataset": "femnist", "data_dir": "x"}}, "adaptive-quality-femnist-s0"),
        ({"strategy": {"name": "adaptive", "alpha_rule": "loss"}, "training": {"seed": 3}}, "adaptive-loss-digits-s3"),
        ({"privacy": {"epsilon": 8.0}}, "fedavg-digits-dpsample-eps8-s0"),
        ({"privacy": {"mode": "client", "noise": 1.0}, "strategy": {"name": "fedprox"}}, "fedprox-digits-dpclient-sigma1-s0"),
    ],
)
def test_default_run_name_says_what_the_run_is(sections, name):
    assert default_run_name(build_config(sections)) == name


def test_per_party_series_become_table_rows_and_summaries(tmp_path):
    run = MlflowRun(tracking_uri=f"sqlite:///{tmp_path}/unused.db", experiment="x", parties=["a", "b", "c"], corrupted=[1])
    round1 = run.split_metrics(1, {"alpha/0": 0.2, "alpha/1": 0.6, "dp_epsilon/0": 1.5, "dp_epsilon_max": 1.5,
                                   "test_accuracy_party/b": 0.5, "test_accuracy": 0.9})
    assert round1 == {"dp_epsilon_max": 1.5, "test_accuracy": 0.9}
    assert run._summaries() == pytest.approx({"alpha_mean": 0.4, "alpha_min": 0.2, "alpha_max": 0.6,
                                              "alpha_mean_corrupted": 0.6, "alpha_mean_clean": 0.2, "dp_epsilon_mean": 1.5})
    # round 2: party 2 joins, party 0 is not sampled and keeps its alpha
    run.split_metrics(2, {"alpha/2": 1.0, "alpha/1": 0.1, "dp_epsilon/2": 0.5})
    assert run._summaries() == pytest.approx({"alpha_mean": (0.2 + 0.1 + 1.0) / 3, "alpha_min": 0.1, "alpha_max": 1.0,
                                              "alpha_mean_corrupted": 0.1, "alpha_mean_clean": 0.6, "dp_epsilon_mean": 1.0})
    rows = {(r["round"], r["metric"], r["party"]): (r["client"], r["corrupted"], r["value"]) for r in run._party_rows}
    assert rows[(1, "alpha", "b")] == (1, True, 0.6)
    assert rows[(1, "test_accuracy_party", "b")] == (1, True, 0.5)
    assert rows[(2, "dp_epsilon", "c")] == (2, False, 0.5)
    assert len(rows) == 7
    with_keys = MlflowRun(tracking_uri=f"sqlite:///{tmp_path}/unused.db", experiment="x", parties=["a"],
                          log_party_metrics=True)
    assert with_keys.split_metrics(1, {"alpha/0": 0.3, "train_loss": 1.0}) == {"alpha/0": 0.3, "train_loss": 1.0}


def test_run_opens_on_runs_with_headline_metrics_table_and_dataset(tmp_path, tracking_uri):
    summary = run_experiment(_tiny(tracking_uri), progress=False)
    client = mlflow.MlflowClient(tracking_uri)
    run = client.get_run(summary["run_id"])
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    # the chart view the printed address opens: the headline charts first, in a section that keeps its order
    view = json.loads(experiment.tags[f"mlflow.sharedViewState.{CHART_VIEW_KEY}"])
    assert [chart["metricKey"] for chart in view["compareRunCharts"]] == list(HEADLINE_METRICS)
    assert HEADLINE_METRICS[0] == "test_accuracy" and set(HEADLINE_METRICS) <= set(run.data.metrics)
    assert [section["isReordered"] for section in view["compareRunSections"]] == [True]
    assert f"viewStateShareKey={CHART_VIEW_KEY}" in summary["ui_path"]
    assert summary["experiment_id"] == experiment.experiment_id
    assert run.info.run_name == summary["run_name"] == "adaptive-quality-digits-s0"
    assert {k: run.data.tags[k] for k in ("strategy", "alpha_rule", "dataset", "seed", "dp_mode")} == {
        "strategy": "adaptive", "alpha_rule": "quality", "dataset": "digits", "seed": "0", "dp_mode": "off"}

    # no per-party keys, but their summaries, beside the headline metrics
    metrics = run.data.metrics
    assert not [k for k in metrics if "/" in k]
    assert {"test_accuracy", "final_accuracy", "alpha_mean", "alpha_min", "alpha_max", "alpha_mean_corrupted",
            "alpha_mean_clean"} <= set(metrics)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "alpha_mean")] == [1, 2]

    # the per-party series: one table, the same values as the run's history
    mlflow.set_tracking_uri(tracking_uri)
    table = mlflow.load_table(PARTY_METRICS_ARTIFACT, run_ids=[run.info.run_id])
    alphas = table[table["metric"] == "alpha"]
    expected = {(row["round"], int(k.split("/")[1])): v for row in summary["history"] for k, v in row.items()
                if k.startswith("alpha/")}
    assert len(expected) == 4  # two parties in each of two rounds
    assert {(int(r), int(c)): v for r, c, v in zip(alphas["round"], alphas["client"], alphas["value"])} == expected
    corrupted = set(json.loads(open(client.download_artifacts(run.info.run_id, "data/clients.json", str(tmp_path))).read())
                    ["corrupted_clients"])
    assert len(corrupted) == 2
    assert all(bool(flag) == (int(c) in corrupted) for c, flag in zip(alphas["client"], alphas["corrupted"]))
    latest = {}
    for (_, c), v in sorted(expected.items()):
        latest[c] = v
    assert metrics["alpha_mean"] == pytest.approx(sum(latest.values()) / len(latest))
    # the plots still come from the history
    assert "plots/alpha_trajectories.png" in {a.path for a in client.list_artifacts(run.info.run_id, "plots")}

    # the training data as a dataset input: name, digest, source and the parties' profile
    [dataset_input] = run.inputs.dataset_inputs
    dataset = dataset_input.dataset
    assert dataset.name == "digits-dirichlet-4parties" and len(dataset.digest) == 8
    assert dataset.source_type == "code" and json.loads(dataset.source)["tags"]["fedlight.dataset"] == "digits"
    profile = json.loads(dataset.profile)
    assert profile["parties"] == 4 and profile["corrupted_parties"] == 2 and profile["classes"] == 10
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "training"
    assert dataset.digest == federated_dataset(load_federated_data(_tiny(tracking_uri)), _tiny(tracking_uri)).digest


def test_dataset_digest_follows_the_data_not_the_run():
    config = build_config({})
    first, same, other = (federated_dataset(make_tiny_federated(seed=s), config) for s in (0, 0, 1))
    assert first.digest == same.digest != other.digest
    changed = make_tiny_federated(seed=0)
    changed.clients[0].train_y[0] = (changed.clients[0].train_y[0] + 1) % 3  # one label differs
    assert federated_dataset(changed, config).digest != first.digest
    assert first.name == "digits-dirichlet-2parties" and json.loads(first.to_dict()["profile"])["train_rows"] == 24
    empty = make_tiny_federated(seed=0)
    empty.clients[0].val_x, empty.clients[0].val_y = empty.clients[0].val_x[:0], empty.clients[0].val_y[:0]
    assert federated_dataset(empty, config).digest != first.digest  # an empty split (--val-fraction 0) hashes too


def test_cli_run_name_and_party_metric_keys_on_an_older_experiment(tmp_path, tracking_uri, capsys):
    client = mlflow.MlflowClient(tracking_uri)
    old = client.create_experiment("made-before")  # as an older fedlight made them: no kind tag
    assert EXPERIMENT_KIND_TAG not in client.get_experiment(old).tags
    out = tmp_path / "summary.json"
    assert main(["run", "--dataset", "digits", "--num-clients", "4", "--clients-per-round", "2", "--rounds", "2",
                 "--batch-size", "32", "--strategy", "adaptive", "--no-progress", "--registered-model", "",
                 "--tracking-uri", tracking_uri, "--experiment", "made-before", "--run-name", "my-run",
                 "--log-party-metrics", "--output-json", str(out)]) == 0
    run = client.get_run(json.loads(out.read_text())["run_id"])
    assert run.info.experiment_id == old and run.info.run_name == "my-run"
    # the UI's address opens the run list in model-training mode (MLflow 3.17 defaults to its GenAI pages)
    assert f"http://127.0.0.1:5000/#/experiments/{old}/runs?workflowType=machine_learning" in capsys.readouterr().out
    tags = client.get_experiment(old).tags
    assert tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND and f"mlflow.sharedViewState.{CHART_VIEW_KEY}" in tags
    assert [k for k in run.data.metrics if k.startswith("alpha/")] and "alpha_mean" in run.data.metrics
    assert PARTY_METRICS_ARTIFACT in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_a_kind_a_user_chose_is_kept_and_empty_run_name_refused(tracking_uri, capsys):
    client = mlflow.MlflowClient(tracking_uri)
    chosen = client.create_experiment("genai-on-purpose", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    assert ensure_experiment(client, "genai-on-purpose") == chosen
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "genai_development"
    assert main(["run", "--run-name", " ", "--tracking-uri", tracking_uri]) == 2
    assert "--run-name must not be empty" in capsys.readouterr().err


def test_a_run_that_loses_the_dataset_insert_race_links_the_dataset_the_winner_wrote(tracking_uri, monkeypatch):
    """Two runs logging one new dataset at once: both find no row, the second insert breaks the unique key."""
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from sqlalchemy.orm import Query

    dataset = MetaDataset(HTTPDatasetSource("https://example.org/parties"), name="parties", digest="abcd1234")
    with MlflowRun(tracking_uri=tracking_uri, experiment="race") as winner:
        winner.log_dataset(dataset)

    real_impl, real_all = SqlAlchemyStore._log_inputs_impl, Query.all
    calls = []

    def stale_first_lookup(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:  # the lookup ran before the winner's row was committed: it sees no dataset
            monkeypatch.setattr(Query, "all", lambda query: [])
            try:
                return real_impl(self, *args, **kwargs)
            finally:
                monkeypatch.setattr(Query, "all", real_all)
        return real_impl(self, *args, **kwargs)

    monkeypatch.setattr(SqlAlchemyStore, "_log_inputs_impl", stale_first_lookup)
    with MlflowRun(tracking_uri=tracking_uri, experiment="race") as loser:
        loser.log_dataset(dataset)
    assert len(calls) == 2  # the first insert failed on the unique key, the retry linked the row
    client = mlflow.MlflowClient(tracking_uri)
    [winner_input] = client.get_run(winner.run_id).inputs.dataset_inputs
    [loser_input] = client.get_run(loser.run_id).inputs.dataset_inputs
    assert loser_input.dataset.digest == winner_input.dataset.digest == "abcd1234"
    assert client.get_run(loser.run_id).info.status == "FINISHED"


def test_dataset_errors_other_than_the_race_are_not_retried(tracking_uri, monkeypatch):
    from mlflow.exceptions import MlflowException

    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise MlflowException("disk I/O error")

    monkeypatch.setattr(mlflow, "log_input", broken)
    with pytest.raises(MlflowException, match="disk I/O"):
        with MlflowRun(tracking_uri=tracking_uri, experiment="race") as run:
            run.log_dataset(object())
    assert len(calls) == 1
    assert mlflow.MlflowClient(tracking_uri).get_run(run.run_id).info.status == "FAILED"
