import gc
import subprocess
import sys
from pathlib import Path

import torch

from fedlight.state import ClientStateStore


def test_tensors_spill_to_disk_and_small_values_stay(tmp_path):
    store = ClientStateStore(tmp_path / "store")
    store.put(3, "control", {"w": torch.ones(2)})
    store.put(3, "alpha", 0.5)
    assert (tmp_path / "store" / "3" / "control.pt").is_file()
    assert torch.equal(store.get(3, "control")["w"], torch.ones(2))
    assert store.get(3, "alpha") == 0.5 and store.get(4, "alpha", 1.0) == 1.0
    assert (3, "control") in store and (4, "control") not in store
    assert store.client_ids() == [3]
    assert [cid for cid, _ in store.items("control")] == [3]


def test_state_dict_round_trip_through_snapshot(tmp_path):
    store = ClientStateStore()
    store.put(0, "control", torch.arange(3.0))
    store.put(1, "alpha", 2.0)
    state = store.snapshot(tmp_path / "snap")
    store.put(0, "control", torch.zeros(3))  # changes after the snapshot must not leak into it
    store.close()

    restored = ClientStateStore()
    restored.load_state_dict(state)
    assert torch.equal(restored.get(0, "control"), torch.arange(3.0))
    assert restored.get(1, "alpha") == 2.0
    restored.close()


def test_replacing_a_tensor_with_a_scalar_removes_the_file(tmp_path):
    store = ClientStateStore(tmp_path)
    store.put(0, "x", torch.ones(1))
    store.put(0, "x", 1.0)
    assert not (tmp_path / "0" / "x.pt").exists() and store.get(0, "x") == 1.0


def test_mutating_a_returned_value_does_not_change_the_store():
    store = ClientStateStore()
    store.put(0, "history", [1, 2])
    store.get(0, "history").append(3)
    assert store.get(0, "history") == [1, 2]
    store.close()


def test_a_store_removes_the_folder_it_created_when_closed_or_dropped(tmp_path):
    with ClientStateStore() as store:
        store.put(0, "control", torch.ones(1))
        closed_root = store.root
    assert not closed_root.exists()

    dropped = ClientStateStore()
    dropped.put(0, "control", torch.ones(1))
    dropped_root = dropped.root
    del dropped
    gc.collect()
    assert not dropped_root.exists()

    given = ClientStateStore(tmp_path / "given")
    given.put(0, "control", torch.ones(1))
    given.close()
    assert (tmp_path / "given" / "0" / "control.pt").is_file()  # a folder the caller chose is theirs


def test_a_store_left_open_is_removed_at_interpreter_exit():
    script = "from fedlight.state import ClientStateStore; import torch\n" \
             "store = ClientStateStore(); store.put(0, 'c', torch.ones(1)); print(store.root)"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert not Path(done.stdout.strip()).exists()
