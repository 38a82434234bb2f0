"""The executors: the same tasks, the same results, wherever they run.

Ray tests share one local Ray (2 CPUs) started for this module; the
two-node cluster test starts and stops its own with ``ray start``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from fedlight.errors import ConfigError
from fedlight.execution import EXECUTOR_NAMES, build_executor
from fedlight.loop import FederatedLoop
from fedlight.models import build_model
from fedlight.privacy import SampleLevelDP
from fedlight.state import ClientStateStore
from fedlight.strategies import STRATEGIES, build_strategy
from tests.conftest import make_tiny_federated

ray = pytest.importorskip("ray")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _loop(strategy: str, executor, *, dp: bool = False, rounds: int = 3, model: nn.Module | None = None, **kwargs):
    data = make_tiny_federated(num_clients=4, per_client=10)
    torch.manual_seed(0)
    model = model if model is not None else build_model("small_cnn", data.input_shape, data.num_classes)
    store = ClientStateStore()
    privacy = None
    if dp:
        privacy = SampleLevelDP(store=store, clip=1.0, delta=1e-5, noise=0.7)
        privacy.calibrate(batches_per_epoch=[3] * 4, local_epochs=1, rounds=rounds)
    return FederatedLoop(
        model=model, data=data, strategy=build_strategy(strategy), rounds=rounds, clients_per_round=3,
        local_epochs=1, batch_size=4, lr=0.1, eval_every=rounds, seed=0, store=store, privacy=privacy,
        executor=executor, **kwargs,
    )


def _params_after(loop) -> dict[str, torch.Tensor]:
    try:
        history = loop.run()
        return loop.global_params() | {"__history__": torch.tensor([r["clients_ok"] for r in history])}
    finally:
        loop.store.close()


def _digest(params) -> str:
    h = hashlib.sha256()
    for key in sorted(params):
        h.update(key.encode())
        h.update(params[key].contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("name", EXECUTOR_NAMES)
def test_executor_smoke(name, request):
    if name == "ray":
        request.getfixturevalue("local_ray")
    executor = build_executor(name) if name == "sequential" else build_executor(name, workers=2)
    loop = _loop("fedavg", executor, rounds=2)
    history = loop.run()
    loop.store.close()
    assert [row["clients_ok"] for row in history] == [3, 3]
    assert 0.0 <= history[-1]["test_accuracy"] <= 1.0


@pytest.mark.parametrize("strategy, dp", [(name, False) for name in sorted(STRATEGIES)] + [("fedavg", True), ("scaffold", True)])
def test_ray_with_two_workers_equals_sequential_bitwise(strategy, dp, local_ray, one_thread):
    sequential = _params_after(_loop(strategy, build_executor("sequential"), dp=dp))
    on_ray = _params_after(_loop(strategy, build_executor("ray", workers=2), dp=dp))
    assert sequential.keys() == on_ray.keys()
    for key in sequential:
        assert torch.equal(sequential[key], on_ray[key]), f"{strategy} (dp={dp}): {key} differs"


def test_state_updates_come_back_to_the_driver_store(local_ray):
    loop = _loop("scaffold", build_executor("ray", workers=2), rounds=1)
    loop.run()
    trained = [cid for cid in range(4) if (cid, "scaffold_control") in loop.store]
    assert len(trained) == 3  # the three sampled parties, written by the driver from the workers' updates
    loop.store.close()


class _Raises(nn.Module):
    """A model whose training forward raises for one party's data (its rows are all label 0 here)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        if self.training and bool((x.sum(dim=(1, 2, 3)) < 0).any()):
            raise RuntimeError("this party's data breaks the model")
        return self.inner(x)


def test_a_failing_party_is_a_failure_on_ray_too(local_ray):
    data = make_tiny_federated(num_clients=4, per_client=10)
    data.clients[1].train_x = -data.clients[1].train_x  # negative pixels: the model raises for party 1
    torch.manual_seed(0)
    model = _Raises(build_model("small_cnn", data.input_shape, data.num_classes))
    loop = FederatedLoop(model=model, data=data, strategy=build_strategy("fedavg"), rounds=1, clients_per_round=4,
                         local_epochs=1, batch_size=4, lr=0.1, seed=0, executor=build_executor("ray", workers=2))
    history = loop.run()
    loop.store.close()
    assert history[0]["clients_ok"] == 3 and history[0]["clients_failed"] == 1


def test_min_clients_skips_the_round_and_keeps_the_model():
    loop = _loop("fedavg", build_executor("sequential"), rounds=1, min_clients=3)
    data = loop.data
    data.clients[0].train_x = data.clients[0].train_x[:0]  # an empty party cannot train: fewer than 3 results
    data.clients[0].train_y = data.clients[0].train_y[:0]
    loop.clients_per_round = 4
    before = loop.global_params()
    history = loop.run()
    loop.store.close()
    assert history[0]["clients_ok"] == 3 and history[0]["round_skipped"] == 0
    loop = _loop("fedavg", build_executor("sequential"), rounds=1, min_clients=3)
    loop.data.clients[0].train_x = loop.data.clients[0].train_x[:0]
    loop.data.clients[0].train_y = loop.data.clients[0].train_y[:0]
    loop.data.clients[1].train_x = loop.data.clients[1].train_x[:0]
    loop.data.clients[1].train_y = loop.data.clients[1].train_y[:0]
    loop.clients_per_round = 4
    before = loop.global_params()
    history = loop.run()
    loop.store.close()
    assert history[0]["clients_ok"] == 2 and history[0]["round_skipped"] == 1
    after = loop.global_params()
    assert all(torch.equal(before[k], after[k]) for k in before)


class KillOnce(nn.Module):
    """Wraps a model; the first training forward anywhere SIGKILLs its own process (marker file: once per test)."""

    def __init__(self, inner: nn.Module, marker: str):
        super().__init__()
        self.inner = inner
        self.marker = marker

    def forward(self, x):
        if self.training and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return self.inner(x)


def test_a_worker_killed_mid_round_is_replaced_and_the_round_is_unchanged(local_ray, one_thread, tmp_path):
    marker = tmp_path / "killed"
    reference_marker = tmp_path / "never"
    reference_marker.write_text("")
    data = make_tiny_federated(num_clients=4, per_client=10)

    def run(marker_path, executor):
        torch.manual_seed(0)
        model = KillOnce(build_model("small_cnn", data.input_shape, data.num_classes), str(marker_path))
        loop = FederatedLoop(model=model, data=data, strategy=build_strategy("fedavg"), rounds=2, clients_per_round=3,
                             local_epochs=1, batch_size=4, lr=0.1, seed=0, executor=executor)
        history = loop.run()
        loop.store.close()
        return loop.global_params(), history

    reference, _ = run(reference_marker, build_executor("sequential"))
    executor = build_executor("ray", workers=2)
    killed, history = run(marker, executor)
    assert marker.is_file(), "no worker was killed"
    assert int(marker.read_text()) != os.getpid()  # a worker process died, not the driver
    assert all(row["clients_ok"] == 3 for row in history)
    for key in reference:
        assert torch.equal(reference[key], killed[key]), key


def test_configerror_from_a_worker_is_raised_as_itself(local_ray):
    class NotAClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return self.w

    loop = _loop("moon", build_executor("ray", workers=2), rounds=1, model=NotAClassifier())
    with pytest.raises(ConfigError, match="embed"):
        loop.run()
    loop.store.close()


def test_ray_options_are_checked():
    with pytest.raises(ConfigError, match="--workers"):
        build_executor("ray", workers=0)
    with pytest.raises(ConfigError, match="--executor"):
        build_executor("threads")


def test_without_an_address_ray_starts_a_local_cluster_unless_ray_address_is_set(monkeypatch):
    from fedlight.execution.ray_executor import ray_init_address

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_init_address(None) == "local"  # not None: that would join a cluster `ray start` left running
    assert ray_init_address("10.0.0.1:6379") == "10.0.0.1:6379"
    monkeypatch.setenv("RAY_ADDRESS", "head:6379")
    assert ray_init_address(None) == "head:6379"
    assert ray_init_address("auto") == "auto"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fedlight_run(tmp_path: Path, name: str, *extra: str) -> dict:
    out = tmp_path / f"{name}.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS"))}
    env["OMP_NUM_THREADS"] = "1"  # torch's threads in the driver, as in each one-CPU worker: bitwise-equal sums
    cmd = [sys.executable, "-m", "fedlight.cli", "run", "--dataset", "digits", "--num-clients", "4",
           "--clients-per-round", "3", "--rounds", "2", "--batch-size", "16", "--model", "logreg",
           "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--registered-model", "", "--no-progress",
           "--output-json", str(out), *extra]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(out.read_text())


def _processes_of(temp: str) -> set[int]:
    """The processes whose command line names ``temp`` (Ray's session folder), and their descendants."""
    parents: dict[int, int] = {}
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if temp.encode() in (entry / "cmdline").read_bytes():
                found.add(int(entry.name))
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    grew = True
    while grew:
        children = {pid for pid, ppid in parents.items() if ppid in found} - found
        found |= children
        grew = bool(children)
    return found


def _stop_cluster(temp: str) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _processes_of(temp)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        for _ in range(50):
            if not _processes_of(temp):
                return
            time.sleep(0.2)


def test_a_run_on_a_two_node_ray_cluster_equals_the_local_run(tmp_path):
    """`ray start --head` and a second `ray start --address` (each one CPU, loopback), then --ray-address."""
    if ray.is_initialized():
        ray.shutdown()
    ray_bin = Path(sys.executable).with_name("ray")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    address = f"127.0.0.1:{port}"
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    try:
        subprocess.run([str(ray_bin), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
                        "--num-cpus=1", "--include-dashboard=false", f"--temp-dir={temp}", "--disable-usage-stats"],
                       check=True, env=env, capture_output=True, timeout=180)
        subprocess.run([str(ray_bin), "start", f"--address={address}", "--node-ip-address=127.0.0.1",
                        "--num-cpus=1", "--resources={\"second_node\": 1}", "--disable-usage-stats"],
                       check=True, env=env, capture_output=True, timeout=180)
        on_cluster = _fedlight_run(tmp_path, "cluster", "--executor", "ray", "--workers", "2",
                                   "--ray-address", address)
    finally:
        _stop_cluster(temp)  # only this test's cluster: `ray stop` would stop every Ray on the machine
        shutil.rmtree(temp, ignore_errors=True)
    local = _fedlight_run(tmp_path, "local")  # the sequential executor, in process
    assert on_cluster["final"] == local["final"]
    assert on_cluster["params_sha256"] == local["params_sha256"]
