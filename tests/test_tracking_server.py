"""fedlight against a real ``mlflow server`` (SQLite backend, served artifact root) over HTTP.

A run, a sweep with two worker processes, and register / export / predict
go through the server; everything is read back with an ``MlflowClient`` on
the http URI. The server and the run are session fixtures
(``tests/tracking_server.py``), shared with ``tests/test_browser.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import mlflow
import numpy as np
import pytest
import torch
import yaml
from mlflow import MlflowClient

from fedlight.cli import main
from tests.test_sweep import TINY_SWEEP
from tests.tracking_server import fedlight_env


@pytest.fixture(autouse=True)
def _restore_tracking_uri():
    """The CLI commands run in-process set MLflow's global tracking URI; later tests must not inherit it."""
    yield
    mlflow.set_tracking_uri(None)


def test_a_run_is_read_back_over_http(served_run):
    client = MlflowClient(served_run.server.uri)
    run = client.get_run(served_run.run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == served_run.experiment
    assert run.data.params["training.rounds"] == "2" and run.data.params["data.num_clients"] == "3"
    assert [m.step for m in client.get_metric_history(served_run.run_id, "test_accuracy")] == [1, 2]
    assert 0.0 <= run.data.metrics["final_accuracy"] <= 1.0

    # artifacts go through the server into its artifact root, not to a path the client writes itself
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    assert {"history.json", "model_info.json", "plots"} <= {a.path for a in client.list_artifacts(served_run.run_id)}
    history = mlflow.artifacts.download_artifacts(run_id=served_run.run_id, artifact_path="history.json",
                                                  tracking_uri=served_run.server.uri)
    assert len(json.loads(open(history).read())) == 2
    assert list(served_run.server.artifacts.rglob("history.json"))
    # the client made no tracking store of its own
    assert not list(served_run.workdir.rglob("*.db"))

    # the model registered at the end of the run, and the logged model it points to
    version = client.get_model_version(served_run.registered_model, "1")
    assert version.run_id == served_run.run_id
    mlflow.set_tracking_uri(served_run.server.uri)  # models:/ URIs resolve against the global registry URI
    model = mlflow.pytorch.load_model(f"models:/{served_run.registered_model}/1")
    assert isinstance(model, torch.nn.Module)


def test_register_export_and_predict_through_the_server(served_run, tmp_path, capsys):
    uri = served_run.server.uri
    assert main(["register", "--run-id", served_run.run_id, "--name", "served-champion", "--tracking-uri", uri]) == 0
    version = MlflowClient(uri).get_model_version_by_alias("served-champion", "champion")
    assert version.run_id == served_run.run_id and version.tags["source_run_id"] == served_run.run_id

    out = tmp_path / "exported"
    assert main(["export", "--model", "served-champion@champion", "--out", str(out), "--tracking-uri", uri]) == 0
    info = json.loads((out / "model.json").read_text())
    assert info["source_run_id"] == served_run.run_id and info["version"] == int(version.version)

    from sklearn.datasets import load_digits

    digits = load_digits()
    np.savez(tmp_path / "digits.npz", x=digits.images[:4] / 16.0)
    capsys.readouterr()
    assert main(["predict", "--model", str(out), str(tmp_path / "digits.npz")]) == 0
    from_folder = capsys.readouterr().out.splitlines()
    assert main(["predict", "--model", "models:/served-champion@champion", str(tmp_path / "digits.npz"),
                 "--tracking-uri", uri]) == 0
    from_registry = capsys.readouterr().out.splitlines()
    assert len(from_folder) == 4
    # the same classes from the exported file and from the registry model served over HTTP
    assert [line.split("\t")[1] for line in from_folder] == [line.split("\t")[1] for line in from_registry]


def test_a_sweep_with_two_workers_through_the_server(mlflow_server, tmp_path):
    """Two worker processes on one Optuna study (its own SQLite file) log to one tracking server."""
    sweep = {**TINY_SWEEP, "study": "served", "register_as": "served-sweep-champion",
             "base": {**TINY_SWEEP["base"], "tracking": {"experiment": "served-sweep"}}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    cmd = [sys.executable, "-m", "fedlight.cli", "sweep", "--config", str(path),
           "--storage", f"sqlite:///{tmp_path}/optuna.db"]
    # one worker is given the server by flag, the other by $MLFLOW_TRACKING_URI (as `make sweep WORKERS=2` would)
    workers = [subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
               for command, env in ((cmd + ["--tracking-uri", mlflow_server.uri], fedlight_env()),
                                    (cmd, {**fedlight_env(), "MLFLOW_TRACKING_URI": mlflow_server.uri}))]
    outputs = []
    try:
        for worker in workers:
            outputs.append(worker.communicate(timeout=300)[0])
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output[-3000:]
        assert "database is locked" not in output

    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("served-sweep")
    parents = client.search_runs([experiment.experiment_id], filter_string="tags.sweep = 'parent'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    children = client.search_runs([experiment.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 2 and {r.info.status for r in children} == {"FINISHED"}
    assert {r.data.tags["optuna_trial"] for r in children} == {"0", "1"}
    for child in children:
        assert len(client.get_metric_history(child.info.run_id, "test_accuracy")) == 2
    assert {"best.json", "optimization_history.png"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    best = max(r.data.metrics["objective_accuracy"] for r in children)
    assert parent.data.metrics["best_accuracy"] == pytest.approx(best)
    champion = client.get_model_version_by_alias("served-sweep-champion", "champion")
    assert champion.run_id in {r.info.run_id for r in children if r.data.metrics["objective_accuracy"] == best}
    # the workers wrote only the Optuna storage and their lock files, no tracking store
    assert [p.name for p in tmp_path.rglob("*.db")] == ["optuna.db"]
