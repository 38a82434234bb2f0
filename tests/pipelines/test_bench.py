"""The hand-written and Flower FedAvg references of pipelines/bench.py, and bench.py's --quick run on the real FEMNIST subset."""

import importlib.util
import json
import subprocess
import sys

import bench_handwritten as hw
import numpy as np
import pytest
import torch

from tests.conftest import FEMNIST_DIR, REPO, requires_femnist

SIZES = (5, 9, 14)  # training rows of writers 0, 1, 2: unequal, so that weighting matters
FLOWER_AVAILABLE = importlib.util.find_spec("flwr") is not None and importlib.util.find_spec("ray") is not None
requires_flower = pytest.mark.skipif(not FLOWER_AVAILABLE, reason="Flower's simulation engine is not installed "
                                     "(pip install -e '.[flower]')")


@pytest.fixture
def tiny_femnist(tmp_path):
    """A FEMNIST-shaped npz pair with 3 writers whose training rows are interleaved."""
    rng = np.random.default_rng(0)
    writer = np.concatenate([np.full(n, w, dtype=np.int32) for w, n in enumerate(SIZES)])
    writer = writer[rng.permutation(len(writer))]
    for split, w in (("train", writer), ("test", np.array([0, 1, 2, 2], dtype=np.int32))):
        y = rng.integers(0, 62, size=len(w)).astype(np.int64)
        y[0] = 61  # 62 classes, as in FEMNIST
        np.savez_compressed(tmp_path / f"{split}.npz", x=rng.integers(0, 256, size=(len(w), 28, 28), dtype=np.uint8),
                            y=y, writer=w, writer_ids=np.array(["w0", "w1", "w2"]))
    return tmp_path


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_natural_partition_one_client_per_writer(tiny_femnist):
    clients, test_x, test_y, num_classes = hw.load_femnist(str(tiny_femnist))
    assert [len(y) for _, y in clients] == list(SIZES) and num_classes == 62
    with np.load(tiny_femnist / "train.npz") as train:
        rows = np.flatnonzero(train["writer"] == 1)
        expected = torch.from_numpy(train["x"][rows]).float().unsqueeze(1) / 255
    assert torch.equal(clients[1][0], expected)
    assert test_x.shape == (4, 1, 28, 28) and float(test_x.max()) <= 1.0


@pytest.mark.parametrize("model", hw.MODELS)
def test_architectures_have_fedlights_shapes(model):
    from fedlight.models import build_model

    ours = [tuple(p.shape) for p in hw.build_model(model, 62).parameters()]
    theirs = [tuple(p.shape) for p in build_model(model, (1, 28, 28), 62).parameters()]
    assert ours == theirs


def test_round_is_the_sample_weighted_average(tiny_femnist):
    clients, *_ = hw.load_femnist(str(tiny_femnist))
    torch.manual_seed(0)
    global_model, local_model = hw.build_model("small_cnn", 62), hw.build_model("small_cnn", 62)
    start = _state(global_model)
    generator = torch.Generator().manual_seed(3)
    replay = torch.Generator().set_state(generator.get_state())
    hw.fedavg_round(global_model, local_model, clients, [0, 1, 2], batch_size=4, lr=0.1, generator=generator)

    locals_ = []
    for c in (0, 1, 2):
        model = hw.build_model("small_cnn", 62)
        model.load_state_dict(start)
        hw.train_local(model, *clients[c], batch_size=4, lr=0.1, generator=replay)
        locals_.append(_state(model))
    weights = np.array(SIZES) / sum(SIZES)
    averaged = global_model.state_dict()
    for k in start:
        weighted = sum(w * s[k] for w, s in zip(weights, locals_))
        unweighted = sum(s[k] for s in locals_) / 3
        assert torch.allclose(averaged[k], weighted, atol=1e-6), k
        assert not torch.allclose(averaged[k], unweighted, atol=1e-6), k  # the weights are the sample counts
        assert not torch.equal(averaged[k], start[k])


def test_one_client_per_round_gives_that_clients_model(tiny_femnist):
    clients, *_ = hw.load_femnist(str(tiny_femnist))
    torch.manual_seed(0)
    global_model, local_model = hw.build_model("small_cnn", 62), hw.build_model("small_cnn", 62)
    alone = hw.build_model("small_cnn", 62)
    alone.load_state_dict(global_model.state_dict())
    generator = torch.Generator().manual_seed(5)
    replay = torch.Generator().set_state(generator.get_state())
    hw.fedavg_round(global_model, local_model, clients, [2], batch_size=4, lr=0.1, generator=generator)
    steps = hw.train_local(alone, *clients[2], batch_size=4, lr=0.1, generator=replay)
    assert steps == 4  # 14 rows in batches of 4, the last one partial
    for k, v in alone.state_dict().items():
        assert torch.equal(global_model.state_dict()[k], v), k


def test_cli_with_lr_zero_keeps_the_initial_model(tiny_femnist, tmp_path):
    out, saved = tmp_path / "summary.json", tmp_path / "model.pt"
    proc = subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "bench_handwritten.py"), "--data-dir", str(tiny_femnist),
         "--model", "small_cnn", "--rounds", "3", "--clients-per-round", "2", "--batch-size", "4", "--lr", "0",
         "--eval-every", "2", "--seed", "7", "--threads", "1", "--output-json", str(out), "--save-model", str(saved)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    torch.manual_seed(7)
    initial = hw.build_model("small_cnn", 62).state_dict()
    final = torch.load(saved)
    for k, v in initial.items():
        assert torch.allclose(final[k], v, atol=1e-6), k
    summary = json.loads(out.read_text())
    assert [("test_accuracy" in row) for row in summary["history"]] == [False, True, True]  # every 2 rounds and the last
    assert summary["threads"] == 1 and summary["clients"] == 3 and 0 <= summary["final"]["accuracy"] <= 1
    assert 0 < summary["rounds_time_s"] <= summary["wall_time_s"]


def test_cli_refuses_more_clients_than_writers(tiny_femnist):
    proc = subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "bench_handwritten.py"), "--data-dir", str(tiny_femnist),
         "--rounds", "1", "--clients-per-round", "4"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2 and "--clients-per-round must be in 1..3" in proc.stderr


def test_bench_bad_data_dir_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "bench.py"), "--quick", "--data-dir", str(tmp_path / "none"),
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2 and "data directory not found" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


@requires_flower
def test_flower_side_is_sample_weighted_fedavg_of_the_handwritten_client(tiny_femnist, tmp_path):
    """Two rounds of all three writers on Flower's simulation engine: replayed by hand, the same global model."""
    import bench_flower

    out, saved = tmp_path / "summary.json", tmp_path / "model.pt"
    proc = subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "bench_flower.py"), "--data-dir", str(tiny_femnist),
         "--model", "small_cnn", "--rounds", "2", "--clients-per-round", "3", "--batch-size", "4", "--lr", "0.1",
         "--eval-every", "1", "--seed", "3", "--threads", "1", "--output-json", str(out), "--save-model", str(saved)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    clients, *_ = hw.load_femnist(str(tiny_femnist))
    torch.manual_seed(3)
    state = _state(hw.build_model("small_cnn", 62))
    weights = np.array(SIZES) / sum(SIZES)
    for server_round in (1, 2):
        locals_ = []
        for c in range(3):
            model = hw.build_model("small_cnn", 62)
            model.load_state_dict(state)
            hw.train_local(model, *clients[c], batch_size=4, lr=0.1,
                           generator=bench_flower.batch_generator(3, server_round, c))
            locals_.append(_state(model))
        state = {k: sum(w * s[k] for w, s in zip(weights, locals_)) for k in state}
    final = torch.load(saved)
    for k, v in state.items():
        assert torch.allclose(final[k], v, atol=1e-5), k
    summary = json.loads(out.read_text())
    assert [row["round"] for row in summary["history"]] == [1, 2] and all("test_accuracy" in r for r in summary["history"])
    assert summary["clients"] == 3 and summary["threads"] == 1 and summary["client_cpus"] == 1
    assert summary["flwr_version"].startswith("1.42")
    assert 0 < summary["rounds_time_s"] and 0 < summary["startup_s"]
    assert summary["rounds_time_s"] + summary["startup_s"] < summary["wall_time_s"]


def test_bench_bad_parts_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "bench.py"), "--quick", "--parts", "handwritten,gpu",
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2 and "--parts: choose from handwritten, flower, ray, dp; got gpu" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


@requires_femnist
def test_bench_quick_ray(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "bench.py"), "--quick", "--parts", "ray", "--models", "small_cnn",
         "--ray-clients-per-round", "3", "--data-dir", str(FEMNIST_DIR), "--out", str(out)],
        capture_output=True, text=True, timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "bench.json").read_text())
    assert result["comparison"] == [] and result["dp"] == []
    [row] = result["ray"]
    assert (row["model"], row["rounds"], row["clients_per_round"], row["workers"]) == ("small_cnn", 2, 3, 2)
    assert {r["side"] for r in row["runs"]} == {"fedlight seq", "fedlight Ray"}
    assert row["ray_startup_s"] > 0
    assert row["ray_over_sequential_rounds"] > 0 and row["ray_over_sequential_process"] > 0
    assert "Ray start-up (s)" in (out / "bench.md").read_text()


@requires_femnist
def test_bench_quick(tmp_path):
    out = tmp_path / "out"
    parts = "handwritten,flower,dp" if FLOWER_AVAILABLE else "handwritten,dp"
    proc = subprocess.run(
        # one model: the LEAF CNN runs the same code under another name
        [sys.executable, str(REPO / "pipelines" / "bench.py"), "--quick", "--parts", parts, "--models", "small_cnn",
         "--data-dir", str(FEMNIST_DIR), "--out", str(out)],
        capture_output=True, text=True, timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "bench.json").read_text())
    assert [(r["model"], r["rounds"]) for r in result["comparison"]] == [("small_cnn", 2)]
    sides = {"fedlight", "hand-written"} | ({"Flower"} if FLOWER_AVAILABLE else set())
    for row in result["comparison"]:
        assert {r["side"] for r in row["runs"]} == sides
        assert all(r["process_wall_s"] > r["rounds_time_s"] > 0 and 0 <= r["accuracy"] <= 1 for r in row["runs"])
        assert row["process_ratio"] > 0 and row["rounds_ratio"] > 0 and row["cpu_count"] >= 1
        if FLOWER_AVAILABLE:
            assert row["fedlight_over_flower_process"] > 0 and row["flower_startup_s"] > 0
            assert row["flower_over_handwritten_process"] > 0
    assert [r["model"] for r in result["dp"]] == ["small_cnn"] and all(r["dp_epsilon_max"] > 0 for r in result["dp"])
    assert result["settings"]["val_fraction"] == 0 and result["ray"] == []
    assert "load average" in result["uptime_before"] and "load average" in result["uptime_after"]
    table = (out / "bench.md").read_text()
    assert "rounds-only ratio" in table and "--val-fraction 0" in table and "| small CNN | 2 |" in table
    assert ("fedlight / Flower process" in table) == FLOWER_AVAILABLE
