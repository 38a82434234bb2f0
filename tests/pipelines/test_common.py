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


def test_a_terminated_grid_stops_its_workers_and_their_runs_end_killed(tmp_path):
    import os
    import pickle
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import common

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    jobs = [_job(f"long-{seed}", uri, seed=seed, rounds=1000) for seed in range(2)]
    script = tmp_path / "grid.py"
    (tmp_path / "jobs.pkl").write_bytes(pickle.dumps(jobs))
    script = tmp_path / "grid.py"
    script.write_text(  # as a pipeline runs it: a main module that spawned workers import again
        "import pickle, sys\n"
        "from pathlib import Path\n"
        f"sys.path.insert(0, {str(Path(common.__file__).parent)!r})\n"
        "from common import run_grid\n"
        "if __name__ == '__main__':\n"
        f"    run_grid(pickle.loads(Path({str(tmp_path / 'jobs.pkl')!r}).read_bytes()),\n"
        f"             results_path=Path({str(tmp_path / 'runs.jsonl')!r}), workers=2)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = mlflow.MlflowClient(uri)

    def runs():
        experiment = client.get_experiment_by_name("grid") if (tmp_path / "mlflow.db").exists() else None
        return client.search_runs([experiment.experiment_id]) if experiment else []

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        started = runs()
        if len(started) == 2 and all(client.get_metric_history(r.info.run_id, "test_accuracy") for r in started):
            break  # both workers are training
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0, stderr
    # the workers were stopped with the pipeline: their runs ended KILLED, not FINISHED later or left RUNNING
    assert sorted(r.info.status for r in runs()) == ["KILLED", "KILLED"], stderr
    assert not (tmp_path / "runs.jsonl").exists() or not (tmp_path / "runs.jsonl").read_text().strip()
