"""A real ``mlflow server`` on a free loopback port, and one tiny fedlight run logged through it.

Session-scoped (the server takes about 13 s to start on 2 cores) and shared
by ``tests/test_tracking_server.py`` and ``tests/test_browser.py``;
``tests/conftest.py`` imports the fixtures. The server process group is
always stopped, whatever the tests did.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

SERVER_START_TIMEOUT_S = 120


@dataclass(frozen=True)
class TrackingServer:
    uri: str
    store: Path  # holds mlflow.db and artifacts/

    @property
    def artifacts(self) -> Path:
        return self.store / "artifacts"


@dataclass(frozen=True)
class ServedRun:
    server: TrackingServer
    run_id: str
    experiment: str
    registered_model: str
    workdir: Path  # the run's working directory, which must hold no tracking store of its own


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (uvicorn's workers included), SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=15)


def fedlight_env() -> dict[str, str]:
    """The environment for fedlight subprocesses: no tracking URI inherited from the caller's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    return env


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> TrackingServer:
    """``mlflow server`` with a SQLite backend and an artifact root it serves itself."""
    store = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    log = (store / "server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{store}/mlflow.db",
         "--artifacts-destination", str(store / "artifacts"), "--serve-artifacts"],
        cwd=store, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        # no GenAI job runner (trace scoring and archival): seven fewer processes, which outlive SIGTERM
        env={**fedlight_env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while not _healthy(uri):
            if process.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(f"mlflow server did not come up on {uri}:\n{(store / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield TrackingServer(uri=uri, store=store)
    finally:
        _stop(process)
        log.close()


@pytest.fixture(scope="session")
def served_run(mlflow_server, tmp_path_factory) -> ServedRun:
    """A 2-round ``fedlight run`` (embedded digits, 3 parties) logged to the server, with its model registered."""
    workdir = tmp_path_factory.mktemp("served-run")
    experiment, registered = "served-digits", "served-digits-run"
    summary_path = workdir / "summary.json"
    result = subprocess.run(
        [sys.executable, "-m", "fedlight.cli", "run", "--dataset", "digits", "--partition", "iid",
         "--num-clients", "3", "--clients-per-round", "2", "--rounds", "2", "--batch-size", "32",
         "--experiment", experiment, "--registered-model", registered, "--tracking-uri", mlflow_server.uri,
         "--output-json", str(summary_path), "--no-progress"],
        cwd=workdir, env=fedlight_env(), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"next: open {mlflow_server.uri}" in result.stdout
    run_id = json.loads(summary_path.read_text())["run_id"]
    return ServedRun(server=mlflow_server, run_id=run_id, experiment=experiment, registered_model=registered,
                     workdir=workdir)
