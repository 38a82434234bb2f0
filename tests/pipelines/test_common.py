"""run_grid: parallel workers on a new tracking store, and a failing run that loses nothing."""

import json

import mlflow
import pytest
from common import Job, run_grid

from fedlight.errors import FedlightError


def _job(name, uri, **training):
    sections = {
        "data": {"dataset": "digits", "num_clients": 3, "partition": "iid"},
        "training": {"model": "small_cnn", "rounds": 1, "clients_per_round": 2, "eval_every": 1, **training},
        "strategy": {"name": "fedavg"},
        "tracking": {"experiment": "grid", "tracking_uri": uri, "registered_model": None, "run_name": name},
    }
    return Job(labels=(("name", name),), sections=sections)


def test_parallel_grid_on_a_new_store_keeps_finished_runs_when_one_fails(tmp_path):
    uri = f"sqlite:///{tmp_path}/new/mlflow.db"  # no store yet: two workers would race to create it
    jobs = [_job("good-a", uri), _job("good-b", uri, seed=1), _job("too-many-clients", uri, clients_per_round=5)]
    results = tmp_path / "runs.jsonl"
    with pytest.raises(FedlightError, match="too-many-clients.*exceeds the 3 clients"):
        run_grid(jobs, results_path=results, workers=2)
    recorded = {json.loads(line)["labels"]["name"] for line in results.read_text().splitlines()}
    assert recorded == {"good-a", "good-b"}
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["grid"])
    assert sorted(runs["tags.mlflow.runName"]) == ["good-a", "good-b"] and set(runs["status"]) == {"FINISHED"}
