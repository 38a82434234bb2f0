"""The hand-written FedAvg reference of pipelines/bench.py, and bench.py's --quick run on the real FEMNIST subset."""

import json
import subprocess
import sys

import bench_handwritten as hw
import numpy as np
import pytest
import torch

from tests.conftest import FEMNIST_DIR, REPO, requires_femnist

SIZES = (5, 9, 14)  # training rows of writers 0, 1, 2: unequal, so that weighting matters


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


@requires_femnist
def test_bench_quick(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "bench.py"), "--quick", "--data-dir", str(FEMNIST_DIR), "--out", str(out)],
        capture_output=True, text=True, timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "bench.json").read_text())
    assert [(r["model"], r["rounds"]) for r in result["comparison"]] == [("leaf_cnn", 2), ("small_cnn", 2)]
    for row in result["comparison"]:
        assert {r["side"] for r in row["runs"]} == {"fedlight", "hand-written"}
        assert all(r["process_wall_s"] > r["rounds_time_s"] > 0 and 0 <= r["accuracy"] <= 1 for r in row["runs"])
        assert row["process_ratio"] > 0 and row["rounds_ratio"] > 0 and row["cpu_count"] >= 1
    assert [r["model"] for r in result["dp"]] == ["leaf_cnn", "small_cnn"] and all(r["dp_epsilon_max"] > 0 for r in result["dp"])
    assert result["settings"]["val_fraction"] == 0
    table = (out / "bench.md").read_text()
    assert "rounds-only ratio" in table and "--val-fraction 0" in table and "| LEAF CNN | 2 |" in table
