"""pipelines/scale.py: the federations it compares, its memory sampling, and its --quick run on a tiny FEMNIST."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scale

from fedlight.errors import FedlightError
from tests.conftest import REPO

FEMNIST_TRAIN_ROWS = 41_904  # shared/data/femnist/train.npz


def test_runs_parse_and_default_pairs_hold_the_same_rows_per_party():
    runs = scale.parse_runs(scale.DEFAULT_RUNS)
    assert [(f.parties, f.volume) for f in runs] == [(300, 0.1), (3000, 1.0), (300, 0.01), (30000, 0.5)]
    sizes = [scale.rows_per_party(FEMNIST_TRAIN_ROWS, f) for f in runs]
    assert [len(s) for s in sizes] == [300, 3000, 300, 30000]
    assert set(sizes[0]) == {14} and set(sizes[1]) == {13, 14}  # 139-140 rows x 0.1; 41,904 / 3,000 = 13.97
    assert set(sizes[2]) == {1} and set(sizes[3]) == {1}  # 139-140 x 0.01 and 1-2 x 0.5 both round to 1 row
    assert [scale.baseline_of(i, runs, sizes) for i in range(4)] == [None, 0, None, 2]


def test_rows_per_party_follow_fedlights_partition():
    from fedlight.data import build_federated_data
    from fedlight.data.sources import SourceData

    n = 203
    source = SourceData(name="toy", train_x=np.zeros((n, 1, 2, 2), np.float32), train_y=np.arange(n) % 3,
                        test_x=np.zeros((3, 1, 2, 2), np.float32), test_y=np.arange(3), class_names=("a", "b", "c"))
    for federation, val in ((scale.Federation(20, 0.3), 0.0), (scale.Federation(7, 1.0), 0.2)):
        data = build_federated_data(source, partition="iid", num_clients=federation.parties, volume=federation.volume,
                                    val_fraction=val, seed=5)
        expected = [c.num_train for c in data.clients]
        assert list(scale.rows_per_party(n, federation, val)) == expected


@pytest.mark.parametrize("text", ["", "300@2", "0", "ten", "300@0.1,x@1"])
def test_bad_runs_are_refused(text):
    with pytest.raises(FedlightError, match="--runs"):
        scale.parse_runs(text)


def test_tree_memory_reports_the_driver_and_ray_workers_apart(tmp_path):
    """A driver holding about 40 MB whose child, named like a Ray worker, holds about 120 MB."""
    worker = tmp_path / "default_worker.py"
    worker.write_text("import time\nblock = b'x' * (120 * 2**20)\ntime.sleep(1.0)\n")
    driver = textwrap.dedent(f"""
        import subprocess, sys
        block = b"x" * (40 * 2**20)
        subprocess.run([sys.executable, {str(worker)!r}], check=True)
    """)
    code, wall, memory, _ = scale.run_measured([sys.executable, "-c", driver], env=None, poll_interval=0.05)
    assert code == 0 and wall >= 1.0
    assert memory["workers"] == 1 and 120 <= memory["worker_peak_mb"] < 200
    assert 120 <= memory["workers_sum_peak_mb"] < 200
    assert 40 <= memory["driver_peak_mb"] < 120  # the worker's memory is not the driver's
    assert memory["wait4_maxrss_mb"] >= memory["worker_peak_mb"] - 5  # wait4 takes the largest of the reaped tree


@pytest.fixture
def tiny_femnist(tmp_path):
    """A FEMNIST-shaped npz pair: 320 training rows of 8 writers, 40 test rows."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 320), ("test", 40)):
        np.savez_compressed(tmp_path / f"{split}.npz", x=rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8),
                            y=rng.integers(0, 62, size=n).astype(np.int64), writer=(np.arange(n) % 8).astype(np.int32),
                            writer_ids=np.array([f"w{i}" for i in range(8)]))
    return tmp_path


def _scale(*argv, timeout=900):
    return subprocess.run([sys.executable, str(REPO / "pipelines" / "scale.py"), *argv], capture_output=True, text=True,
                          timeout=timeout)


def test_scale_refuses_bad_input_in_one_line(tiny_femnist, tmp_path):
    proc = _scale("--quick", "--data-dir", str(tiny_femnist), "--runs", "4@0.25,1", "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "fewer parties than --clients-per-round 2" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


def test_scale_quick(tiny_femnist, tmp_path):
    out = tmp_path / "out"
    proc = _scale("--quick", "--data-dir", str(tiny_femnist), "--runs", "4@0.25,16", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "scale.json").read_text())
    assert result["settings"]["rounds"] == 2 and result["settings"]["executors"] == ["sequential"]
    assert result["settings"]["warm_up"] is False
    small, large = result["rows"]
    assert (small["parties"], small["volume"], large["parties"], large["volume"]) == (4, 0.25, 16, 1.0)
    assert small["rows_per_party_mean"] == large["rows_per_party_mean"] == 20  # 80 x 0.25 and 320 / 16
    assert small["baseline_label"] is None and large["baseline_label"] == "4@0.25"
    for row in result["rows"]:
        assert row["driver_peak_mb"] > 100 and row["s_per_round"] > 0 and len(row["repeats"][0]["round_times_s"]) == 2
        assert row["s_per_round_later"] == row["repeats"][0]["round_times_s"][1]
        assert row["worker_peak_mb"] is None and row["startup_s"] is None
        assert row["wait4_maxrss_mb"] >= 0.97 * row["driver_peak_mb"]  # an upper bound (forked children count too)
    assert large["driver_peak_ratio"] == pytest.approx(large["driver_peak_mb"] / small["driver_peak_mb"])
    assert large["s_per_round_ratio"] == pytest.approx(large["s_per_round_later"] / small["s_per_round_later"])
    table = (out / "scale.md").read_text()
    assert "python pipelines/scale.py --quick" in table and "| sequential | 16 | 1 | 20.00 (20-20) |" in table
    assert "workers' summed peak (MB)" in table and "wait4 maxrss, upper bound (MB)" in table


def _fedlight_has_ray_executor() -> bool:
    proc = subprocess.run([str(REPO / ".venv" / "bin" / "fedlight"), "run", "--help"], capture_output=True, text=True,
                          timeout=120)
    return all(flag in proc.stdout for flag in ("--executor", "--workers", "--worker-cpus"))


def test_scale_quick_ray_reports_the_workers_apart(tiny_femnist, tmp_path):
    if not _fedlight_has_ray_executor():
        pytest.skip("fedlight run has no --executor ray yet")
    out = tmp_path / "out"
    proc = _scale("--quick", "--data-dir", str(tiny_femnist), "--runs", "4@0.25", "--executors", "ray", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    [row] = json.loads((out / "scale.json").read_text())["rows"]
    assert row["executor"] == "ray" and row["workers"] >= 2 and row["startup_s"] > 0  # 2 actors, maybe idle workers too
    assert any(name.startswith("ray::") for name in row["worker_names"])
    assert row["worker_peak_mb"] > 100 and row["workers_sum_peak_mb"] >= row["worker_peak_mb"]
    assert row["driver_peak_mb"] > 100 and row["other_sum_peak_mb"] > 0  # Ray's services (raylet, GCS, ...)


@pytest.mark.parametrize(("cmdline", "worker"), [
    ("ray::IDLE", True), ("ray::_Worker.run", True), ("/venv/bin/python /venv/ray/_private/workers/default_worker.py "
                                                      "--node-ip-address=127.0.0.1", True),
    ("ray::DashboardAgent", False), ("ray::RuntimeEnvAgent", False), ("/venv/ray/core/src/ray/gcs/gcs_server --x", False),
    ("/venv/ray/core/src/ray/raylet/raylet --python_worker_command=python default_worker.py", False),
])
def test_ray_workers_are_told_from_rays_services(cmdline, worker):
    assert scale._is_ray_worker(cmdline) is worker
