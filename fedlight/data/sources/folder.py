"""Image folders, one per party: ``--dataset folder --data-dir DIR``.

Accepted layouts (class folders as in torchvision's ``ImageFolder``: one
folder per class, image files inside)::

    DIR/<party>/<class>/<image>          the party's training images
    DIR/<party>/train/<class>/<image>    the same, if present (then only train/ and test/ are read)
    DIR/<party>/test/<class>/<image>     optional: the party's own test set
    DIR/test/<class>/<image>             optional: a pooled test set of no party

``train`` and ``test`` are therefore reserved names: a party may not be called
``test``, and inside a party folder ``train``/``test`` are not classes. Where
neither ``DIR/test/`` nor any party's ``test/`` exists, each party's images are
split with a seeded stratified split (``test_fraction``, as the table source
does). Images are files with an ``ImageFolder`` extension (.jpg, .jpeg, .png,
.ppm, .bmp, .pgm, .tif, .tiff, .webp); other files and hidden entries are
skipped. Every image becomes grayscale float in [0, 1] (0 = black), ``[N, 1,
H, W]``, resized (bilinear) to the size of the first image read (first
party, first class, first file, each in sorted order). The classes are the sorted union of the class folder names of every
party and test set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedlight.data.sources import SourceData, SourceOptions
from fedlight.data.sources.table import split_party
from fedlight.errors import ConfigError, DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
RESERVED = ("train", "test")


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan(root: Path, skip: tuple[str, ...] = ()) -> dict[str, list[Path]]:
    """``{class: [image paths]}`` of one ImageFolder tree; DataError if it holds no images."""
    classes = [d for d in _subdirs(root) if d.name not in skip]
    if not classes:
        raise DataError(f"{root}: no class folders (expected {root}/<class>/<image>)")
    found = {}
    for directory in classes:
        images = sorted(
            p for p in directory.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
        )
        if images:
            found[directory.name] = images
    if not found:
        raise DataError(f"{root}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in its class folders")
    return found


def _read(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as image:
            gray = image.convert("L")
            if size is not None and gray.size != size:
                gray = gray.resize(size, Image.Resampling.BILINEAR)
            return np.asarray(gray, dtype=np.float32) / 255.0
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, ValueError, SyntaxError
        raise DataError(f"cannot read image {path}: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from None


def load_folder(data_dir: str | None, seed: int = 0, options: SourceOptions | None = None) -> SourceData:
    """The ``folder`` source: see the module docstring."""
    options = options or SourceOptions()
    if not data_dir:
        raise ConfigError("dataset 'folder' needs --data-dir DIR (one sub-folder per party)")
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    party_dirs = [d for d in _subdirs(root) if d.name != "test"]
    if not party_dirs:
        raise DataError(f"{root}: no party folders (expected {root}/<party>/<class>/<image>)")
    trees: list[tuple[dict[str, list[Path]], dict[str, list[Path]] | None]] = []
    for party in party_dirs:
        has_test = (party / "test").is_dir()
        if (party / "train").is_dir():
            train = _scan(party / "train")
        else:
            train = _scan(party, skip=RESERVED)
        trees.append((train, _scan(party / "test") if has_test else None))
    pooled = _scan(root / "test") if (root / "test").is_dir() else None
    names = set()
    for train, test in trees:
        names |= set(train) | set(test or {})
    names |= set(pooled or {})
    class_names = tuple(sorted(names))
    label = {name: i for i, name in enumerate(class_names)}
    size = None

    def read_tree(tree: dict[str, list[Path]]) -> tuple[list[np.ndarray], list[int]]:
        nonlocal size
        xs, ys = [], []
        for name in sorted(tree):
            for path in tree[name]:
                image = _read(path, size)
                if size is None:
                    size = (image.shape[1], image.shape[0])  # PIL's (width, height)
                xs.append(image)
                ys.append(label[name])
        return xs, ys

    train_x, train_y, train_w, test_x, test_y, test_w = [], [], [], [], [], []
    own_tests = any(test is not None for _, test in trees)
    split_stats = {}
    for index, (party, (train, test)) in enumerate(zip(party_dirs, trees)):
        xs, ys = read_tree(train)
        if pooled is None and not own_tests and options.test_fraction > 0:
            y = np.asarray(ys, dtype=np.int64)
            try:
                keep, held, split_stats[party.name] = split_party(y, options.test_fraction, seed)
            except ValueError:
                raise DataError(f"{party}: too few images ({len(ys)}) to hold out test_fraction={options.test_fraction}") from None
            test_x += [xs[i] for i in held]
            test_y += [ys[i] for i in held]
            test_w += [index] * len(held)
            xs, ys = [xs[i] for i in keep], [ys[i] for i in keep]
        elif test is not None:
            txs, tys = read_tree(test)
            test_x += txs
            test_y += tys
            test_w += [index] * len(tys)
        train_x += xs
        train_y += ys
        train_w += [index] * len(ys)
    if pooled is not None:
        txs, tys = read_tree(pooled)
        test_x += txs
        test_y += tys
        test_w += [-1] * len(tys)
    height, width = size[1], size[0]
    test_sets = [kind for kind, present in (("per party", own_tests), ("pooled", pooled is not None),
                                           ("seeded split per party", bool(split_stats))) if present]
    preprocessing = {
        "image_size": [height, width],
        "color": "grayscale, float in [0, 1] (0 = black)",
        "resize": "bilinear, to the first image's size",
        "test_sets": " + ".join(test_sets) or "none",
    }
    if split_stats:
        preprocessing["split"] = {"test_fraction": options.test_fraction, "random_state": seed, "stratified": split_stats}
    return SourceData(
        name="folder",
        train_x=np.stack(train_x)[:, None],
        train_y=np.asarray(train_y, dtype=np.int64),
        test_x=np.stack(test_x)[:, None] if test_x else np.zeros((0, 1, height, width), np.float32),
        test_y=np.asarray(test_y, dtype=np.int64),
        class_names=class_names,
        train_writer=np.asarray(train_w, dtype=np.int64),
        test_writer=np.asarray(test_w, dtype=np.int64) if (own_tests or split_stats) else None,
        writer_ids=tuple(p.name for p in party_dirs),
        preprocessing=preprocessing,
    )
