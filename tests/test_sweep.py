import os
import signal
import subprocess
import sys
import time

import mlflow
import optuna
import pytest
import yaml

from fedlight.cli import main
from fedlight.errors import ConfigError
from fedlight.sweep import load_sweep, run_sweep

TINY_SWEEP = {
    "study": "tiny",
    "n_trials": 2,
    "objectives": ["accuracy"],
    "pruner": "none",
    "register_as": "tiny-champion",
    "heartbeat_interval": 1,
    "grace_period": 2,
    "space": {"training.lr": {"type": "float", "low": 0.02, "high": 0.2, "log": True}},
    "base": {
        "data": {"dataset": "digits", "num_clients": 3, "partition": "iid"},
        "training": {"rounds": 2, "clients_per_round": 2, "batch_size": 32},
        "tracking": {"experiment": "tiny-sweep"},
    },
}


def _write(tmp_path, **changes):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**TINY_SWEEP, **changes}))
    return path


def _children(client, parent_id):
    experiment = client.get_experiment_by_name("tiny-sweep")
    return client.search_runs([experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")


def test_sweep_resumes_into_the_same_study_and_parent_run(tmp_path):
    storage, uri = f"sqlite:///{tmp_path}/optuna.db", f"sqlite:///{tmp_path}/mlflow.db"
    sweep = load_sweep(_write(tmp_path))
    study = run_sweep(sweep, storage=storage, tracking_uri=uri, sweeps_dir=tmp_path)
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 2
    parent_id = study.user_attrs["mlflow_parent_run_id"]

    study = run_sweep(sweep, storage=storage, tracking_uri=uri, n_trials=3, sweeps_dir=tmp_path)
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 3
    assert study.user_attrs["mlflow_parent_run_id"] == parent_id

    client = mlflow.MlflowClient(uri)
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert "best.training.lr" in parent.data.tags and parent.data.metrics["best_accuracy"] == pytest.approx(study.best_value)
    assert {a.path for a in client.list_artifacts(parent_id)} >= {"optimization_history.png", "best.json"}
    children = _children(client, parent_id)
    assert len(children) == 3 and set(r.info.status for r in children) == {"FINISHED"}
    assert {r.info.run_name for r in children} == {f"fedavg-digits-s0-trial{n}" for n in range(3)}
    assert client.get_experiment(parent.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    child = children[0]
    assert child.data.tags["optuna_state"] == "COMPLETE" and "training.lr" in child.data.params
    assert len(client.get_metric_history(child.info.run_id, "test_accuracy")) >= 1
    parents = client.search_runs([parent.info.experiment_id], filter_string="tags.sweep = 'parent'")
    assert len(parents) == 1
    champion = client.get_model_version_by_alias("tiny-champion", "champion")
    assert champion.run_id == study.best_trial.user_attrs["mlflow_run_id"]

    # finishing again with the same best trial (a second worker, a resume with nothing left) registers nothing new
    versions = len(client.search_model_versions("name='tiny-champion'"))
    run_sweep(sweep, storage=storage, tracking_uri=uri, n_trials=3, sweeps_dir=tmp_path)
    assert len(client.search_model_versions("name='tiny-champion'")) == versions
    assert client.get_model_version_by_alias("tiny-champion", "champion").version == champion.version


def test_killed_worker_leaves_no_trial_running(tmp_path):
    storage, uri = f"sqlite:///{tmp_path}/optuna.db", f"sqlite:///{tmp_path}/mlflow.db"
    path = _write(tmp_path, n_trials=3)
    cmd = [sys.executable, "-m", "fedlight.cli", "sweep", "--config", str(path), "--storage", storage, "--tracking-uri", uri]
    # a SIGKILLed worker cannot remove its temporary folders: keep them under tmp_path
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    worker = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path, env=env)
    # Kill it inside a trial's run: between Optuna creating a trial and its
    # first heartbeat, a killed trial would never go stale (Optuna skips
    # trials without a heartbeat), and the run's MLflow child is the case here.
    client = mlflow.MlflowClient(uri)
    deadline = time.time() + 120
    running = []
    while time.time() < deadline and not running:
        time.sleep(0.5)
        try:
            study = optuna.load_study(study_name="tiny", storage=storage)
        except KeyError:
            continue
        experiment = client.get_experiment_by_name("tiny-sweep")
        if experiment is None:
            continue
        started = {r.data.tags.get("optuna_trial") for r in client.search_runs(
            [experiment.experiment_id], filter_string="attributes.status = 'RUNNING' and tags.optuna_trial != ''")}
        running = [t for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,)) if str(t.number) in started]
    assert running, "the worker never started a trial"
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    time.sleep(3)  # past the grace period
    subprocess.run(cmd, check=True, capture_output=True, cwd=tmp_path, timeout=300, env=env)
    study = optuna.load_study(study_name="tiny", storage=storage)
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.RUNNING not in states
    assert states.count(optuna.trial.TrialState.COMPLETE) == 3
    assert optuna.trial.TrialState.FAIL in states
    runs = client.search_runs([client.get_experiment_by_name("tiny-sweep").experiment_id])
    assert "RUNNING" not in {r.info.status for r in runs}


def test_sweep_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown sweep keys"):
        load_sweep(_write(tmp_path, trials=3))
    with pytest.raises(ConfigError, match="not a config option"):
        load_sweep(_write(tmp_path, space={"training.speed": {"type": "float", "low": 0, "high": 1}}))
    with pytest.raises(ConfigError, match="low < high"):
        load_sweep(_write(tmp_path, space={"training.lr": {"type": "float", "low": 1, "high": 0.1}}))
    with pytest.raises(ConfigError, match="objectives"):
        load_sweep(_write(tmp_path, objectives=["speed"]))


def test_multi_objective_prints_the_pareto_front(tmp_path, capsys):
    path = _write(tmp_path, study="pareto", objectives=["accuracy", "epsilon"], register_as=None,
                  space={"privacy.noise": {"type": "float", "low": 0.5, "high": 2.0}},
                  base={**TINY_SWEEP["base"], "privacy": {"mode": "sample", "clip": 1.0}})
    code = main(["sweep", "--config", str(path), "--storage", f"sqlite:///{tmp_path}/o.db",
                 "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--n-trials", "2"])
    out = capsys.readouterr().out
    assert code == 0 and "Pareto front (accuracy vs epsilon)" in out and "epsilon=" in out


def test_a_changed_categorical_space_is_refused_before_anything_runs(tmp_path, capsys):
    storage, uri = f"sqlite:///{tmp_path}/optuna.db", f"sqlite:///{tmp_path}/mlflow.db"
    old = optuna.distributions.CategoricalDistribution(["uniform", "quality"])
    study = optuna.create_study(study_name="tiny", storage=storage, direction="maximize")
    study.add_trial(optuna.trial.create_trial(params={"strategy.alpha_rule": "quality"},
                                              distributions={"strategy.alpha_rule": old}, value=0.5))
    space = {"strategy.alpha_rule": {"type": "categorical", "choices": ["uniform", "quality", "label_fit"]}}
    path = _write(tmp_path, space=space)

    code = main(["sweep", "--config", str(path), "--storage", storage, "--tracking-uri", uri])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "strategy.alpha_rule" in err[0] and "new study name" in err[0]
    assert len(optuna.load_study(study_name="tiny", storage=storage).trials) == 1
    assert mlflow.MlflowClient(uri).get_experiment_by_name("tiny-sweep") is None  # no parent run was made


def test_a_changed_numeric_range_may_share_the_study(tmp_path):
    from fedlight.sweep import check_stored_space

    study = optuna.create_study()
    study.add_trial(optuna.trial.create_trial(
        params={"training.lr": 0.1}, distributions={"training.lr": optuna.distributions.FloatDistribution(0.01, 0.3)},
        value=0.5))
    check_stored_space(study, {"training.lr": {"type": "float", "low": 0.02, "high": 0.5}})
    with pytest.raises(ConfigError, match="training.lr"):
        check_stored_space(study, {"training.lr": {"type": "int", "low": 1, "high": 5}})


def test_a_retried_trial_resumes_the_dead_trials_run_from_its_checkpoint(tmp_path):
    from pathlib import Path

    from fedlight.resume import RESUMED_FROM_TAG

    storage, uri = f"sqlite:///{tmp_path}/optuna.db", f"sqlite:///{tmp_path}/mlflow.db"
    # tests/resume_models.py stalls in its 16th training forward pass: round 3 of 4 (2 parties x 3 steps a round)
    path = _write(tmp_path, study="retry", n_trials=1, pruner="none", register_as=None, base={
        "data": {"dataset": "digits", "num_clients": 4},
        "training": {"model": "tests.resume_models:StallingNet", "rounds": 4, "clients_per_round": 2, "local_steps": 3},
        "tracking": {"experiment": "tiny-sweep"},
    })
    marker, scratch = tmp_path / "stalled", tmp_path / "scratch"
    scratch.mkdir()
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "TMPDIR": str(scratch), "PYTHONPATH": str(repo), "FEDLIGHT_TEST_STALL_AT": "16",
           "FEDLIGHT_TEST_STALL_MARKER": str(marker)}
    worker = subprocess.Popen([sys.executable, "-m", "fedlight.cli", "sweep", "--config", str(path), "--storage", storage,
                               "--tracking-uri", uri], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
                              env=env)
    try:
        deadline = time.time() + 240
        while not marker.exists():
            assert worker.poll() is None and time.time() < deadline, "the worker never reached round 3"
            time.sleep(0.05)
    finally:
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
    client = mlflow.MlflowClient(uri)
    experiment_id = client.get_experiment_by_name("tiny-sweep").experiment_id
    (dead,) = client.search_runs([experiment_id], filter_string="tags.optuna_trial = '0'")
    assert dead.info.status == "RUNNING"
    time.sleep(3)  # past the grace period

    study = run_sweep(load_sweep(path), storage=storage, tracking_uri=uri, sweeps_dir=tmp_path / "sweeps")
    first, retry = study.trials
    assert first.state == optuna.trial.TrialState.FAIL and retry.state == optuna.trial.TrialState.COMPLETE
    assert retry.params == first.params and retry.system_attrs["failed_trial"] == 0
    assert retry.user_attrs["mlflow_run_id"] == dead.info.run_id, "the retry continues the dead trial's run"
    run = client.get_run(dead.info.run_id)
    assert run.info.status == "FINISHED" and run.data.tags[RESUMED_FROM_TAG] == "2"
    assert sorted(m.step for m in client.get_metric_history(dead.info.run_id, "clients_ok")) == [1, 2, 3, 4]
    assert sorted(retry.intermediate_values) == [1, 2, 3, 4]


def test_a_pruned_trial_leaves_no_checkpoints(tmp_path):
    from pathlib import Path

    from fedlight.checkpoints import CHECKPOINT_TAG
    from fedlight.config import build_config
    from fedlight.experiment import run_experiment
    from fedlight.sweep import PrunedRun, PruningListener

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.MlflowClient(uri).create_experiment("tiny-sweep", artifact_location=(tmp_path / "artifacts").as_uri())
    trial = optuna.create_study().ask()
    trial.should_prune = lambda: True
    config = build_config({**TINY_SWEEP["base"], "tracking": {"experiment": "tiny-sweep", "tracking_uri": uri,
                                                              "registered_model": None}})
    with pytest.raises(PrunedRun):
        run_experiment(config, progress=False, extra_listeners=[PruningListener(trial)])
    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tiny-sweep").experiment_id])
    assert run.info.status == "KILLED"
    assert not Path(run.data.tags[CHECKPOINT_TAG]).exists()
