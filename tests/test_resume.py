"""``fedlight run --resume``: a run SIGKILLed in the middle of a round continues in its own MLflow run
and ends bit for bit where an uninterrupted run ends; what cannot be resumed is refused with one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch

from fedlight.cli import main
from fedlight.config import build_config
from fedlight.experiment import run_experiment
from fedlight.resume import COMMIT_TAG, FORCED_TAG, HOST_TAG, PID_TAG, RESUMED_FROM_TAG, plan_resume

REPO = Path(__file__).resolve().parent.parent
# 4 parties, 2 a round, 3 local steps: 6 training forward passes a round
TINY = ["--dataset", "digits", "--model", "tests.resume_models:StallingNet", "--num-clients", "4",
        "--clients-per-round", "2", "--local-steps", "3", "--registered-model", "", "--no-progress",
        "--experiment", "resume"]
STEPS_PER_ROUND = 6
TIMING = {"round_time_s", "wall_time_s"}


@pytest.fixture(scope="module")
def uri(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("resume-store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    # artifacts beside the store, not in ./mlruns (a SQLite store's default artifact root is relative to the cwd)
    mlflow.MlflowClient(tracking_uri=uri).create_experiment("resume", artifact_location=(folder / "artifacts").as_uri())
    return uri


def _client(uri: str) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=uri)


def _run_in_process(args: list[str], output: Path) -> dict:
    assert main(["run", *args, "--output-json", str(output)]) == 0
    return json.loads(output.read_text())


def _kill_mid_round(args: list[str], stall_at: int, tmp_path: Path, uri: str) -> str:
    """Start ``fedlight run`` in a subprocess, SIGKILL it inside its ``stall_at``-th training forward pass; its run id."""
    marker = tmp_path / "stalled"
    env = dict(os.environ, PYTHONPATH=str(REPO), FEDLIGHT_TEST_STALL_AT=str(stall_at),
               FEDLIGHT_TEST_STALL_MARKER=str(marker))
    process = subprocess.Popen([sys.executable, "-m", "fedlight.cli", "run", *args, "--tracking-uri", uri],
                               cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            assert process.poll() is None, f"the run ended before stalling: {process.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "the run never reached the stalling forward pass"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    client = _client(uri)
    runs = client.search_runs([client.get_experiment_by_name("resume").experiment_id],
                              filter_string="attributes.status = 'RUNNING'", order_by=["attributes.start_time DESC"])
    assert runs, "the killed run is not in the store"
    return runs[0].info.run_id


def _steps(client: mlflow.MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def _series(client: mlflow.MlflowClient, run_id: str) -> dict[str, list[tuple[int, float]]]:
    keys = client.get_run(run_id).data.metrics
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in keys if k not in TIMING}


def _without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in history]


CASES = {
    # checkpoints every 2 rounds, killed in round 4: round 3 was logged after the last checkpoint and is trained again
    "fedavg": (["--rounds", "5", "--checkpoint-every", "2"], 3 * STEPS_PER_ROUND + 2, 2),
    "dp_sgd": (["--rounds", "4", "--dp-mode", "sample", "--dp-noise", "1.0", "--dp-clip", "1.0"], 2 * STEPS_PER_ROUND + 4, 2),
    "scaffold": (["--rounds", "4", "--strategy", "scaffold"], 2 * STEPS_PER_ROUND + 4, 2),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_run_killed_mid_round_resumes_bit_for_bit(case, uri, tmp_path):
    extra, stall_at, checkpoint_round = CASES[case]
    args = [*TINY, *extra]
    straight = _run_in_process([*args, "--tracking-uri", uri], tmp_path / "straight.json")

    run_id = _kill_mid_round(args, stall_at, tmp_path, uri)
    client = _client(uri)
    killed_in = (stall_at - 1) // STEPS_PER_ROUND + 1
    # killed inside round `killed_in`: every earlier round is logged, that one is not
    assert _steps(client, run_id, "clients_ok") == list(range(1, killed_in))
    checkpoints = Path(client.get_run(run_id).data.tags["fedlight.checkpoint_dir"])
    assert [p.name for p in checkpoints.iterdir()] == [f"round-{checkpoint_round:06d}"]

    resumed = _run_in_process(["--resume", run_id, "--tracking-uri", uri], tmp_path / "resumed.json")
    run = client.get_run(run_id)
    assert resumed["run_id"] == run_id and run.info.status == "FINISHED"
    assert run.data.tags[RESUMED_FROM_TAG] == str(checkpoint_round)
    assert resumed["params_sha256"] == straight["params_sha256"]
    assert resumed["final"] == straight["final"]
    assert _without_timing(resumed["history"]) == _without_timing(straight["history"])
    # every metric at every step once, with the uninterrupted run's value
    assert _series(client, run_id) == _series(client, straight["run_id"])
    assert _steps(client, run_id, "round_time_s") == list(range(1, int(extra[1]) + 1))
    assert not checkpoints.exists(), "a finished run's checkpoints are removed"
    if case == "fedavg":  # the logged models themselves
        ours, theirs = mlflow.pytorch.load_model(resumed["model_uri"]), mlflow.pytorch.load_model(straight["model_uri"])
        for key, value in theirs.state_dict().items():
            assert torch.equal(ours.state_dict()[key], value), key


class _StopAfter:
    """A round listener that presses Ctrl-C after round ``n``."""

    def __init__(self, n: int):
        self.n = n

    def on_round_end(self, server_round: int, metrics: dict[str, float]) -> None:
        if server_round == self.n:
            raise KeyboardInterrupt


def _config(uri: str, rounds: int, **sections) -> dict:
    values = {
        "data": {"dataset": "digits", "num_clients": 4},
        "training": {"model": "tests.resume_models:StallingNet", "rounds": rounds, "clients_per_round": 2, "local_steps": 2},
        "tracking": {"experiment": "resume", "tracking_uri": uri, "registered_model": None},
    }
    for section, options in sections.items():
        values.setdefault(section, {}).update(options)
    return values


def _interrupted_run(uri: str, rounds: int = 3, stop_after: int = 1, **sections) -> str:
    with pytest.raises(KeyboardInterrupt):
        run_experiment(build_config(_config(uri, rounds, **sections)), progress=False, extra_listeners=[_StopAfter(stop_after)])
    client = _client(uri)
    run = client.search_runs([client.get_experiment_by_name("resume").experiment_id],
                             order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert run.info.status == "KILLED"
    return run.info.run_id


def _refused(capsys, args: list[str]) -> str:
    capsys.readouterr()
    assert main(["run", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("fedlight: error: "), err
    return err


def test_unknown_and_finished_runs_are_refused(uri, tmp_path, capsys):
    assert "no such run" in _refused(capsys, ["--resume", "0123456789abcdef0123456789abcdef", "--tracking-uri", uri])
    finished = _run_in_process([*TINY, "--rounds", "1", "--tracking-uri", uri], tmp_path / "done.json")["run_id"]
    assert "FINISHED" in _refused(capsys, ["--resume", finished, "--tracking-uri", uri])
    assert "--force only goes with --resume" in _refused(capsys, [*TINY, "--force"])


def test_a_run_still_running_or_not_made_by_fedlight_run_is_refused(uri, capsys):
    import socket

    client = _client(uri)
    experiment_id = client.get_experiment_by_name("resume").experiment_id
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run_id = client.create_run(experiment_id, tags={PID_TAG: str(sleeper.pid), HOST_TAG: socket.gethostname()}).info.run_id
        assert f"RUNNING in process {sleeper.pid}" in _refused(capsys, ["--resume", run_id, "--tracking-uri", uri])
    finally:
        sleeper.kill()
        sleeper.wait()
    assert "has no config/resolved.yaml" in _refused(capsys, ["--resume", run_id, "--tracking-uri", uri])
    assert client.get_run(run_id).info.status == "RUNNING"


def test_a_changed_config_or_code_is_refused_unless_forced(uri, tmp_path, capsys):
    run_id = _interrupted_run(uri, rounds=2)
    client = _client(uri)
    err = _refused(capsys, ["--resume", run_id, "--tracking-uri", uri, "--rounds", "3"])
    assert "the config differs" in err and "training.rounds 2 -> 3" in err and "--force" in err
    client.set_tag(run_id, COMMIT_TAG, "0" * 40)
    err = _refused(capsys, ["--resume", run_id, "--tracking-uri", uri])
    assert "the run was made by fedlight" in err and "--force" in err
    assert client.get_run(run_id).info.status == "KILLED", "a refused resume leaves the run alone"
    assert _steps(client, run_id, "clients_ok") == [1]

    # forced: the run continues with the new config, and says so
    summary = _run_in_process(["--resume", run_id, "--tracking-uri", uri, "--rounds", "3", "--force"], tmp_path / "f.json")
    run = client.get_run(run_id)
    assert summary["run_id"] == run_id and run.info.status == "FINISHED"
    assert "training.rounds 2 -> 3" in run.data.tags[FORCED_TAG] and "code" in run.data.tags[FORCED_TAG]
    assert _steps(client, run_id, "clients_ok") == [1, 2, 3]
    assert run.data.tags[COMMIT_TAG] != "0" * 40, "the resumed run records the code that finished it"


STATEFUL = {
    "fedadam": {"strategy": {"name": "fedadam"}},  # the server's Adam moments
    "adaptive": {"strategy": {"name": "adaptive", "alpha_momentum": 0.5}},  # the parties' moving-average alphas
    "dp_client": {"privacy": {"mode": "client", "noise": 1.0}},  # DP-FedAvg's noise generator and accountant
}


@pytest.mark.parametrize("case", sorted(STATEFUL))
def test_a_ctrl_c_run_resumes_like_an_uninterrupted_one(case, uri, tmp_path):
    run_id = _interrupted_run(uri, rounds=3, stop_after=2, **STATEFUL[case])
    client = _client(uri)
    statuses = []

    class Status:
        def on_round_end(self, server_round, metrics):
            statuses.append((server_round, client.get_run(run_id).info.status))

    # from Python: the plan, then the run
    plan = plan_resume(run_id, tracking_uri=uri, overrides={"keep_checkpoints": True})
    assert plan.start_round == 2 and plan.config.tracking.keep_checkpoints
    resumed = run_experiment(plan.config, progress=False, resume=plan, extra_listeners=[Status()])
    assert statuses == [(3, "RUNNING")] and client.get_run(run_id).info.status == "FINISHED"
    straight = run_experiment(build_config(_config(uri, 3, **STATEFUL[case])), progress=False)
    assert resumed["params_sha256"] == straight["params_sha256"]
    assert resumed.get("privacy") == straight.get("privacy")
    assert _series(client, run_id) == _series(client, straight["run_id"])
    kept = Path(client.get_run(run_id).data.tags["fedlight.checkpoint_dir"])
    assert [p.name for p in kept.iterdir()] == ["round-000003"], "--keep-checkpoints keeps the last one"
