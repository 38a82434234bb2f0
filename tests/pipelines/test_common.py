"""run_grid: parallel workers on a new tracking store, a failing run that loses nothing, and reruns on a changed config."""

import json

import mlflow
import pytest
from common import Job, run_grid

from fedlight.errors import FedlightError


def _job(name, uri, strategy=None, **training):
    sections = {
        "data": {"dataset": "digits", "num_clients": 3, "partition": "iid"},
        "training": {"model": "small_cnn", "rounds": 1, "clients_per_round": 2, "eval_every": 1, **training},
        "strategy": {"name": "fedavg", **(strategy or {})},
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


def test_a_recorded_run_runs_again_only_when_its_resolved_config_changed(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    results = tmp_path / "runs.jsonl"

    def run_ids(job):
        run_grid([job], results_path=results)
        return [json.loads(line)["run_id"] for line in results.read_text().splitlines()]

    first = run_ids(_job("a", uri))
    # tracking settings, and options FedAvg does not take (a new adaptive default), change no result
    assert run_ids(_job("a", f"sqlite:///{tmp_path}/other.db", strategy={"alpha_momentum": 0.5})) == first
    # a changed setting under the same labels is a new run, and the newest record is the one used
    changed_job = _job("a", uri, lr=0.2)
    changed = run_ids(changed_job)
    assert len(changed) == 2 and changed[0] == first[0]
    assert run_grid([changed_job], results_path=results)[changed_job.key]["run_id"] == changed[1]
    # a record from before configs were kept cannot be trusted, so it runs again
    legacy = json.loads(results.read_text().splitlines()[-1])
    del legacy["config"]
    results.write_text(json.dumps(legacy) + "\n")
    assert len(run_ids(changed_job)) == 2
