"""Image sources: scikit-learn's digits, FEMNIST and the two-source crossdomain mix.

Every source here returns a :class:`SourceData` with float images in [0, 1] shaped
``[N, 1, H, W]`` (0 = background, 1 = ink), integer labels, and, where the
data has them, the writer of each sample (for the ``natural`` partition).
Nothing here downloads: ``digits`` ships inside scikit-learn and ``femnist``
reads a directory the user points at.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fedlight.data.sources import SourceData
from fedlight.errors import ConfigError, DataError

FEMNIST_CLASSES = tuple("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def load_digits(data_dir: str | None = None, seed: int = 0, test_fraction: float = 0.2) -> SourceData:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes).

    There is no writer information, so the test split is a seeded stratified
    hold-out. ``data_dir`` is accepted and ignored: the data is embedded.
    """
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    test_mask = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):
        rows = np.flatnonzero(y == label)
        test_mask[rng.choice(rows, size=int(round(test_fraction * len(rows))), replace=False)] = True
    return SourceData(
        name="digits",
        train_x=x[~test_mask],
        train_y=y[~test_mask],
        test_x=x[test_mask],
        test_y=y[test_mask],
        class_names=tuple(str(d) for d in range(10)),
    )


def load_femnist(data_dir: str | None, seed: int = 0) -> SourceData:
    """FEMNIST grouped by writer, from either supported layout.

    * npz: ``train.npz`` and ``test.npz`` with ``x`` (uint8, 255 = ink), ``y``,
      ``writer`` and ``writer_ids`` (the layout of ``shared/data/femnist``).
    * LEAF JSON: ``train/*.json`` and ``test/*.json`` as written by LEAF's
      ``preprocess.sh`` (``users``, ``num_samples``, ``user_data``; pixels in
      [0, 1] with 1.0 = white paper, so ink = 1 - x).
    """
    if not data_dir:
        raise ConfigError("dataset 'femnist' needs --data-dir (a directory with train.npz/test.npz or LEAF's train/ and test/)")
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"data directory not found: {root}")
    if (root / "train.npz").exists() or (root / "test.npz").exists():
        return _load_femnist_npz(root)
    if (root / "train").is_dir() or (root / "test").is_dir():
        return _load_leaf_json(root)
    raise DataError(f"{root} holds neither train.npz/test.npz nor LEAF's train/ and test/ JSON directories")


def _load_femnist_npz(root: Path) -> SourceData:
    parts = {}
    for split in ("train", "test"):
        path = root / f"{split}.npz"
        if not path.is_file():
            raise DataError(f"missing {path}")
        try:
            with np.load(path, allow_pickle=False) as arrays:
                missing = {"x", "y", "writer", "writer_ids"} - set(arrays.files)
                if missing:
                    raise DataError(f"{path} lacks the arrays {sorted(missing)}")
                parts[split] = {key: arrays[key] for key in ("x", "y", "writer", "writer_ids")}
        except DataError:
            raise
        except Exception as exc:  # zipfile/pickle/ValueError: all mean "not a valid npz"
            raise DataError(f"cannot read {path}: {exc}") from None
        x = parts[split]["x"]
        if x.ndim != 3 or len(x) != len(parts[split]["y"]) or len(x) != len(parts[split]["writer"]):
            raise DataError(f"{path}: x must be [N, H, W] with one y and one writer per image")
    writer_ids = parts["train"]["writer_ids"]
    if not np.array_equal(writer_ids, parts["test"]["writer_ids"]):
        raise DataError(f"{root}: train.npz and test.npz disagree on writer_ids")
    train_y, test_y = parts["train"]["y"].astype(np.int64), parts["test"]["y"].astype(np.int64)
    _check_labels(train_y, test_y, len(FEMNIST_CLASSES), root)
    return SourceData(
        name="femnist",
        train_x=(parts["train"]["x"].astype(np.float32) / 255.0)[:, None],
        train_y=train_y,
        test_x=(parts["test"]["x"].astype(np.float32) / 255.0)[:, None],
        test_y=test_y,
        class_names=FEMNIST_CLASSES,
        train_writer=parts["train"]["writer"].astype(np.int64),
        test_writer=parts["test"]["writer"].astype(np.int64),
        writer_ids=tuple(str(w) for w in writer_ids),
    )


def _read_leaf_split(directory: Path) -> dict[str, tuple[list, list]]:
    files = sorted(directory.glob("*.json"))
    if not files:
        raise DataError(f"no *.json files in {directory}")
    users: dict[str, tuple[list, list]] = {}
    for path in files:
        try:
            shard = json.loads(path.read_text())
            user_data = shard["user_data"]
            for user in shard["users"]:
                xs, ys = users.setdefault(user, ([], []))
                xs.extend(user_data[user]["x"])
                ys.extend(user_data[user]["y"])
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise DataError(f"{path} is not a LEAF JSON shard ({type(exc).__name__}: {exc})") from None
    return users


def _load_leaf_json(root: Path) -> SourceData:
    splits = {}
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise DataError(f"missing LEAF directory {root / split}")
        splits[split] = _read_leaf_split(root / split)
    writer_ids = sorted(set(splits["train"]) | set(splits["test"]))
    index = {w: i for i, w in enumerate(writer_ids)}
    arrays = {}
    for split, users in splits.items():
        xs, ys, ws = [], [], []
        for user in sorted(users):
            ux, uy = users[user]
            xs.extend(ux)
            ys.extend(uy)
            ws.extend([index[user]] * len(uy))
        try:
            x = np.asarray(xs, dtype=np.float32)
        except ValueError:
            raise DataError(f"{root / split}: images have different lengths") from None
        side = int(round(np.sqrt(x.shape[1]))) if x.ndim == 2 else 0
        if x.ndim != 2 or side * side != x.shape[1] or len(xs) != len(ys):
            raise DataError(f"{root / split}: each x must be a flat square image with one label")
        # LEAF stores pixel/255 with 1.0 = white paper; flip so that 1 = ink.
        arrays[split] = (
            (1.0 - x).reshape(-1, 1, side, side),
            np.asarray(ys, dtype=np.int64),
            np.asarray(ws, dtype=np.int64),
        )
    _check_labels(arrays["train"][1], arrays["test"][1], len(FEMNIST_CLASSES), root)
    return SourceData(
        name="femnist",
        train_x=arrays["train"][0],
        train_y=arrays["train"][1],
        test_x=arrays["test"][0],
        test_y=arrays["test"][1],
        class_names=FEMNIST_CLASSES,
        train_writer=arrays["train"][2],
        test_writer=arrays["test"][2],
        writer_ids=tuple(writer_ids),
    )


def _check_labels(train_y: np.ndarray, test_y: np.ndarray, num_classes: int, root: Path) -> None:
    for y in (train_y, test_y):
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise DataError(f"{root}: labels must lie in [0, {num_classes - 1}]")


def load_crossdomain(data_dir: str | None, seed: int = 0, digits_parties: int = 30) -> SourceData:
    """Two sources on one label space (the digits 0-9): FEMNIST writers and scikit-learn's digits.

    FEMNIST keeps its writers' digit images (28x28, one party per writer);
    scikit-learn's 8x8 digits are upsampled to 28x28 (bilinear) and dealt at
    random to ``digits_parties`` parties. The parties therefore differ in
    resolution, style and size. Test data: both sources' test splits, with
    the domain of each sample, so accuracy can be reported per domain.
    """
    import torch
    import torch.nn.functional as F

    femnist = load_femnist(data_dir, seed=seed)
    digits = load_digits(seed=seed)
    keep_train, keep_test = femnist.train_y < 10, femnist.test_y < 10
    side = femnist.input_shape[1]

    def upsample(x: np.ndarray) -> np.ndarray:
        return F.interpolate(torch.from_numpy(x), size=(side, side), mode="bilinear", align_corners=False).clamp(0, 1).numpy()

    num_femnist = len(femnist.writer_ids)
    rng = np.random.default_rng([seed, 11])
    digit_party = num_femnist + rng.integers(0, digits_parties, size=len(digits.train_y))
    return SourceData(
        name="crossdomain",
        train_x=np.concatenate([femnist.train_x[keep_train], upsample(digits.train_x)]),
        train_y=np.concatenate([femnist.train_y[keep_train], digits.train_y]),
        test_x=np.concatenate([femnist.test_x[keep_test], upsample(digits.test_x)]),
        test_y=np.concatenate([femnist.test_y[keep_test], digits.test_y]),
        class_names=tuple(str(d) for d in range(10)),
        train_writer=np.concatenate([femnist.train_writer[keep_train], digit_party]),
        test_writer=None,
        writer_ids=tuple(f"femnist:{w}" for w in femnist.writer_ids) + tuple(f"digits:{k}" for k in range(digits_parties)),
        domain_names=("femnist", "digits"),
        writer_domain=np.array([0] * num_femnist + [1] * digits_parties),
        test_domain=np.concatenate([np.zeros(int(keep_test.sum()), dtype=np.int64), np.ones(len(digits.test_y), dtype=np.int64)]),
    )
