"""Round checkpoints of a run, written so that a killed run can continue (``fedlight run --resume``).

A run's checkpoints live in one folder beside its tracking store, keyed by
run id (:func:`checkpoint_root`; the run's ``fedlight.checkpoint_dir`` tag
names it). Each checkpoint is a folder ``round-NNNNNN`` holding the party
state files and ``loop.pt``; ``loop.pt`` is written last, under a temporary
name renamed into place, so a folder without it is an unfinished checkpoint
and is never read. Once a newer checkpoint is complete the older ones are
removed. Party state files unchanged since the previous checkpoint are
hard links to it (:meth:`fedlight.state.ClientStateStore.snapshot`).

The loop's state (:meth:`fedlight.loop.FederatedLoop.state_dict`) includes
the global random generators (:func:`capture_rng_state`): client sampling,
batch order and DP noise have seeds of their own per round and party, but
dropout in a model, or a user's code, draws from torch's, NumPy's and
Python's global generators, whose state at the end of a round a resumed run
must start from.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_TAG = "fedlight.checkpoint_dir"
_ROUND_DIR = re.compile(r"round-(\d{6,})")
STATE_FILE = "loop.pt"


def capture_rng_state() -> dict[str, Any]:
    """The global generators' states: torch (and CUDA's, once used), NumPy's legacy one, Python's."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return {"torch": torch.get_rng_state(), "cuda": cuda, "numpy": np.random.get_state(), "python": random.getstate()}


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def checkpoint_root(tracking_uri: str) -> Path:
    """Where a store's runs keep their checkpoints: ``checkpoints/`` beside a SQLite file or inside a file
    store, else ``mlruns/checkpoints`` under the working folder (a remote server has no folder of ours)."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent / "checkpoints"
    if tracking_uri.startswith("file:"):
        return Path(tracking_uri.removeprefix("file:").removeprefix("//")).resolve() / "checkpoints"
    if "://" not in tracking_uri:
        return Path(tracking_uri).resolve() / "checkpoints"
    return Path("mlruns").resolve() / "checkpoints"


def _rounds(directory: Path) -> list[tuple[int, Path]]:
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _ROUND_DIR.fullmatch(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(directory: str | Path) -> tuple[int, Path] | None:
    """The last complete checkpoint in a run's folder, as (round, folder), or None."""
    complete = [(r, p) for r, p in _rounds(Path(directory)) if (p / STATE_FILE).is_file()]
    return complete[-1] if complete else None


class Checkpointer:
    """A round listener that checkpoints the loop every ``every`` rounds and after the last one.

    Give it the loop with :meth:`attach` (the loop takes its listeners when it
    is built). The loop calls its listeners once it has recorded the round
    (``server_round``, ``history``), so the state saved is the state after
    that round. It must come before listeners that can stop the run
    (Optuna's pruning), so that a round is saved before anything else happens.
    """

    def __init__(self, directory: str | Path, *, every: int, rounds: int):
        self.directory = Path(directory)
        self.every = every
        self.rounds = rounds
        self.loop: Any = None

    def attach(self, loop: Any) -> Checkpointer:
        self.loop = loop
        return self

    def on_round_end(self, server_round: int, metrics: dict[str, float]) -> None:
        if self.every <= 0 or (server_round % self.every and server_round != self.rounds):
            return
        self.save(server_round)

    def save(self, server_round: int) -> Path:
        target = self.directory / f"round-{server_round:06d}"
        if target.exists():  # an unfinished one from a killed process
            shutil.rmtree(target)
        self.loop.save_checkpoint(target)
        for other_round, path in _rounds(self.directory):
            if other_round != server_round:
                shutil.rmtree(path, ignore_errors=True)
        return target


def remove_checkpoints(directory: str | Path) -> None:
    """Delete a run's checkpoint folder (and the ``checkpoints`` folder above it once empty)."""
    directory = Path(directory)
    shutil.rmtree(directory, ignore_errors=True)
    try:
        directory.parent.rmdir()
    except OSError:
        pass
