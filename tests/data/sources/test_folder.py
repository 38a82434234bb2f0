import numpy as np
import pytest
from PIL import Image

from fedlight.data import build_federated_data, load_source
from fedlight.data.sources import SourceOptions
from fedlight.errors import DataError


def _png(path, value, size=(8, 6), mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "RGB":
        Image.new("RGB", size, value).save(path)
    else:
        Image.new("L", size, value).save(path)


def _tree(root):
    """alice: cat, dog; bob: dog, fish + own test; pooled test: cat, fish."""
    _png(root / "alice" / "cat" / "a.png", 255)
    _png(root / "alice" / "cat" / "b.png", 0)
    _png(root / "alice" / "dog" / "c.png", 255, size=(16, 12))  # resized to the first image's 8x6
    (root / "alice" / "dog" / "notes.txt").write_text("not an image")
    _png(root / "bob" / "train" / "dog" / "d.png", (255, 0, 0), mode="RGB")
    _png(root / "bob" / "train" / "fish" / "e.png", 128)
    _png(root / "bob" / "test" / "dog" / "f.png", 255)
    _png(root / "test" / "cat" / "g.png", 0)
    _png(root / "test" / "fish" / "h.png", 255)
    _png(root / "test" / "fish" / "i.png", 255)
    return root


def test_folder_tree_with_party_and_pooled_test_sets(tmp_path):
    src = load_source("folder", str(_tree(tmp_path)))
    assert src.writer_ids == ("alice", "bob")
    assert src.class_names == ("cat", "dog", "fish")
    assert src.input_shape == (1, 6, 8) and src.train_x.dtype == np.float32
    assert src.train_y.tolist() == [0, 0, 1, 1, 2] and src.train_writer.tolist() == [0, 0, 0, 1, 1]
    assert src.train_x[0].min() == 1.0 and src.train_x[1].max() == 0.0
    assert src.train_x[2].min() == 1.0  # the 16x12 white image, resized
    assert src.train_x[3, 0, 0, 0] == pytest.approx(76 / 255, abs=1 / 255)  # pure red in grayscale (ITU-R 601-2 luma)
    assert src.train_x[4, 0, 0, 0] == pytest.approx(128 / 255)
    # bob's own test image, then the pooled test set (no party: -1)
    assert src.test_y.tolist() == [1, 0, 2, 2] and src.test_writer.tolist() == [1, -1, -1, -1]
    data = build_federated_data(src, partition="natural", val_fraction=0.0, seed=0)
    assert [c.name for c in data.clients] == ["alice", "bob"]
    assert data.test_client.tolist() == [1, -1, -1, -1] and len(data.test_y) == 4
    assert "per party + pooled" == src.preprocessing["test_sets"]


def test_folder_without_test_sets_is_split_per_party(tmp_path):
    for party in ("p1", "p2"):
        for label in ("a", "b"):
            for i in range(4):
                _png(tmp_path / party / label / f"{i}.png", 40 * i)
    src = load_source("folder", str(tmp_path), seed=3, options=SourceOptions(test_fraction=0.5))
    assert len(src.train_y) == 8 and len(src.test_y) == 8
    assert np.bincount(src.test_writer).tolist() == [4, 4]
    for w in (0, 1):  # stratified: two of each class held out per party
        assert np.bincount(src.test_y[src.test_writer == w]).tolist() == [2, 2]
    assert src.preprocessing["test_sets"] == "seeded split per party"


def test_only_a_pooled_test_set_has_no_test_writers(tmp_path):
    _png(tmp_path / "p1" / "a" / "0.png", 1)
    _png(tmp_path / "p2" / "b" / "0.png", 2)
    _png(tmp_path / "test" / "a" / "0.png", 3)
    src = load_source("folder", str(tmp_path))
    assert src.test_writer is None and len(src.test_y) == 1
    data = build_federated_data(src, partition="natural", val_fraction=0.0)
    assert data.test_client is None and len(data.test_y) == 1


@pytest.mark.parametrize(
    "setup, where, message",
    [
        (lambda r: None, "", "no party folders"),
        (lambda r: (r / "p1").mkdir(), "p1", "no class folders"),
        (lambda r: ((r / "p1" / "cat").mkdir(parents=True), (r / "p1" / "cat" / "x.txt").write_text("x")), "p1", "no image files"),
        (lambda r: ((r / "p1" / "cat").mkdir(parents=True), (r / "p1" / "cat" / "x.png").write_bytes(b"garbage")),
         "p1/cat/x.png", "cannot read image"),
    ],
)
def test_bad_folders_are_data_errors_naming_the_path(tmp_path, setup, where, message):
    setup(tmp_path)
    with pytest.raises(DataError) as info:
        load_source("folder", str(tmp_path))
    assert message in str(info.value) and str(tmp_path / where).rstrip("/") in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_source("folder", str(tmp_path / "nope"))
