"""Round checkpoints: where they go, which one counts, what a snapshot copies, the config digest."""

from __future__ import annotations

from pathlib import Path

import torch

from fedlight.checkpoints import STATE_FILE, Checkpointer, checkpoint_root, latest_checkpoint
from fedlight.config import build_config
from fedlight.resume import config_changes, config_digest, params_digest
from fedlight.state import ClientStateStore


class _FakeLoop:
    """What the checkpointer calls: save_checkpoint(folder) writing party files, then the state file."""

    def __init__(self):
        self.saved: list[Path] = []

    def save_checkpoint(self, directory: Path) -> Path:
        directory.mkdir(parents=True)
        (directory / "clients").mkdir()
        (directory / STATE_FILE).write_text("state")
        self.saved.append(directory)
        return directory / STATE_FILE


def test_the_checkpointer_saves_every_n_rounds_and_the_last_and_keeps_one(tmp_path):
    loop = _FakeLoop()
    checkpointer = Checkpointer(tmp_path / "run", every=2, rounds=5).attach(loop)
    for server_round in range(1, 6):
        checkpointer.on_round_end(server_round, {})
    assert [p.name for p in loop.saved] == ["round-000002", "round-000004", "round-000005"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["round-000005"]
    assert latest_checkpoint(tmp_path / "run") == (5, tmp_path / "run" / "round-000005")


def test_an_unfinished_checkpoint_is_never_read_and_is_replaced(tmp_path):
    run = tmp_path / "run"
    (run / "round-000003").mkdir(parents=True)
    (run / "round-000003" / STATE_FILE).write_text("complete")
    (run / "round-000004" / "clients").mkdir(parents=True)  # killed while writing: no state file
    assert latest_checkpoint(run) == (3, run / "round-000003")
    assert latest_checkpoint(tmp_path / "missing") is None
    Checkpointer(run, every=1, rounds=9).attach(_FakeLoop()).on_round_end(4, {})
    assert latest_checkpoint(run) == (4, run / "round-000004")
    assert sorted(p.name for p in run.iterdir()) == ["round-000004"]


def test_checkpoint_every_zero_writes_nothing(tmp_path):
    loop = _FakeLoop()
    Checkpointer(tmp_path, every=0, rounds=1).attach(loop).on_round_end(1, {})
    assert loop.saved == []


def test_checkpoints_live_beside_the_tracking_store(tmp_path):
    assert checkpoint_root(f"sqlite:///{tmp_path}/mlflow.db") == tmp_path.resolve() / "checkpoints"
    assert checkpoint_root(f"file://{tmp_path}/mlruns") == (tmp_path / "mlruns").resolve() / "checkpoints"
    assert checkpoint_root("http://127.0.0.1:5000") == Path("mlruns").resolve() / "checkpoints"


def _inode(root: str, client: int) -> int:
    return (Path(root) / str(client) / "control.pt").stat().st_ino


def test_a_snapshot_links_the_stores_files_and_later_writes_leave_it_alone(tmp_path):
    store = ClientStateStore(tmp_path / "spill")
    store.put(0, "control", torch.zeros(3))
    snapshot = store.snapshot(tmp_path / "c1")
    assert _inode(snapshot["root"], 0) == _inode(str(store.root), 0), "same file system: a hard link, no copy"
    store.put(0, "control", torch.ones(3))  # replaces the store's file, never writes into it
    restored = ClientStateStore(tmp_path / "restored")
    restored.load_state_dict(snapshot)
    assert torch.equal(restored.get(0, "control"), torch.zeros(3))
    restored.put(0, "control", torch.full((3,), 5.0))
    assert torch.equal(torch.load(Path(snapshot["root"]) / "0" / "control.pt"), torch.zeros(3))


def test_on_another_file_system_a_snapshot_copies_only_changed_files(tmp_path, monkeypatch):
    import fedlight.state

    spill = tmp_path / "spill"
    real_link = fedlight.state.os.link

    def link(source, target):
        if Path(source).is_relative_to(spill):
            raise OSError(18, "Invalid cross-device link")
        real_link(source, target)

    monkeypatch.setattr(fedlight.state.os, "link", link)
    store = ClientStateStore(spill)
    store.put(0, "control", torch.zeros(3))
    store.put(1, "control", torch.ones(3))
    store.put(1, "alpha", 0.5)
    first = store.snapshot(tmp_path / "c1")
    store.put(1, "control", torch.full((3,), 2.0))
    second = store.snapshot(tmp_path / "c2")
    assert _inode(second["root"], 0) == _inode(first["root"], 0), "an unchanged file is linked from the last snapshot"
    assert _inode(second["root"], 1) != _inode(first["root"], 1), "a changed file is a new copy"
    for client in (0, 1):
        (Path(first["root"]) / str(client) / "control.pt").unlink()  # the older checkpoint is pruned
    restored = ClientStateStore(tmp_path / "restored")
    restored.load_state_dict(second)
    assert torch.equal(restored.get(0, "control"), torch.zeros(3))
    assert torch.equal(restored.get(1, "control"), torch.full((3,), 2.0))
    assert restored.get(1, "alpha") == 0.5


def test_the_config_digest_ignores_where_a_run_is_kept_only():
    base = build_config({"training": {"rounds": 2}})
    moved = build_config({"training": {"rounds": 2}, "tracking": {"tracking_uri": "sqlite:///x.db", "checkpoint_every": 5,
                                                                   "keep_checkpoints": True}})
    longer = build_config({"training": {"rounds": 3}})
    assert config_digest(base) == config_digest(moved)
    assert config_digest(base) != config_digest(longer)
    assert config_changes(base, longer) == ["training.rounds 2 -> 3"]


def test_the_params_digest_sees_every_bit():
    params = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    assert params_digest(params) == params_digest({k: v.clone() for k, v in params.items()})
    nudged = {"w": torch.tensor([1.0, torch.nextafter(torch.tensor(2.0), torch.tensor(3.0)).item()]), "n": torch.tensor(3)}
    assert params_digest(params) != params_digest(nudged)
