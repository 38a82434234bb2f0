"""Parties built by your own Python code: ``--dataset python --data-factory mypkg.data:make_parties``.

``data_factory`` is ``module:callable`` (or ``module.callable``; ``module:obj.attr``
also works). The module must be importable (installed, or on ``PYTHONPATH``).
The callable is called with ``seed=`` if it accepts a ``seed`` argument (or
``**kwargs``) and with ``data_dir=`` if it has a ``data_dir`` parameter. It
returns the parties, either

* a dict ``{party_name: (train_dataset, test_dataset_or_None)}``, or
* a list of ``(train_dataset, test_dataset_or_None)`` pairs (parties
  ``party-0``, ``party-1``, ...),

where each dataset is any ``torch.utils.data.Dataset`` (or sequence) yielding
``(x, y)``: ``x`` a tensor or array (every sample the same shape), ``y`` an int
or a 0-d tensor. A party's test set is its own (for per-party accuracy). Where
no party has a test set, each party's train rows are split with a seeded
stratified split (``test_fraction``). The classes are ``0 .. max label``,
named by the first train dataset's ``classes`` attribute if it has one
(as torchvision datasets do).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

import numpy as np

from fedlight.data.sources import SourceData, SourceOptions
from fedlight.data.sources.table import split_party
from fedlight.errors import ConfigError, DataError


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def resolve_factory(spec: str) -> Any:
    """Import ``module:attr`` / ``module.attr``; ConfigError naming ``spec`` if it does not resolve."""
    if ":" in spec:
        module_name, _, attr_path = spec.partition(":")
    else:
        module_name, _, attr_path = spec.rpartition(".")
    if not module_name or not attr_path:
        raise ConfigError(f"--data-factory {spec!r}: expected module:callable (e.g. mypkg.data:make_parties)")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"--data-factory {spec!r}: cannot import {module_name!r} ({_one_line(exc)})") from None
    for attr in attr_path.split("."):
        if not hasattr(target, attr):
            raise ConfigError(f"--data-factory {spec!r}: {module_name!r} has no attribute {attr_path!r}")
        target = getattr(target, attr)
    if not callable(target):
        raise ConfigError(f"--data-factory {spec!r}: {attr_path!r} is a {type(target).__name__}, not a callable")
    return target


def _call(factory: Any, seed: int, data_dir: str | None) -> Any:
    kwargs: dict[str, Any] = {}
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        parameters = {}
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    if "seed" in parameters or var_kw:
        kwargs["seed"] = seed
    if "data_dir" in parameters:
        kwargs["data_dir"] = data_dir
    return factory(**kwargs)


def _parties(result: Any, spec: str) -> list[tuple[str, Any, Any]]:
    def pair(value: Any, name: str) -> tuple[Any, Any]:
        if isinstance(value, (tuple, list)) and len(value) == 2:
            return value[0], value[1]
        raise DataError(
            f"--data-factory {spec!r}: party {name!r} must be a (train_dataset, test_dataset_or_None) pair, "
            f"not {type(value).__name__}"
        )

    if isinstance(result, Mapping):
        items = [(str(k), *pair(v, str(k))) for k, v in result.items()]
    elif isinstance(result, (list, tuple)):
        items = [(f"party-{i}", *pair(v, f"party-{i}")) for i, v in enumerate(result)]
    else:
        raise DataError(
            f"--data-factory {spec!r} returned {type(result).__name__}; expected a dict "
            "{party: (train, test_or_None)} or a list of (train, test_or_None) pairs"
        )
    if not items:
        raise DataError(f"--data-factory {spec!r} returned no parties")
    return items


def _label(y: Any) -> int:
    if hasattr(y, "numel") and hasattr(y, "item"):  # a torch tensor
        if y.numel() != 1:
            raise ValueError(f"a label tensor of shape {tuple(y.shape)}")
        y = y.item()
    elif isinstance(y, np.ndarray):
        if y.size != 1:
            raise ValueError(f"a label array of shape {y.shape}")
        y = y.item()
    if isinstance(y, (bool, np.bool_)) or not isinstance(y, (int, np.integer, float, np.floating)) or float(y) != int(y):
        raise ValueError(f"the label {y!r} (labels must be non-negative integers)")
    if int(y) < 0:
        raise ValueError(f"the negative label {int(y)}")
    return int(y)


def _materialise(dataset: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    import torch

    try:
        items = [dataset[i] for i in range(len(dataset))] if hasattr(dataset, "__len__") else list(dataset)
    except TypeError:
        raise DataError(f"{where}: {type(dataset).__name__} is not a dataset (no len/indexing or iteration)") from None
    xs, ys = [], []
    shape = None
    for i, item in enumerate(items):
        try:
            x, y = item
        except (TypeError, ValueError):
            raise DataError(f"{where}: item {i} is not an (x, y) pair") from None
        try:
            if isinstance(x, torch.Tensor):
                x = x.detach().to(device="cpu", dtype=torch.float32).numpy()
            else:
                x = np.asarray(x, dtype=np.float32)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise DataError(f"{where}: item {i}: x is not a tensor or array ({_one_line(exc)})") from None
        if shape is None:
            shape = x.shape
        elif x.shape != shape:
            raise DataError(f"{where}: item {i} has x of shape {tuple(x.shape)}, item 0 of shape {tuple(shape)}")
        try:
            ys.append(_label(y))
        except ValueError as exc:
            raise DataError(f"{where}: item {i} has {exc}") from None
        xs.append(x)
    if not xs:
        return np.zeros((0,), np.float32), np.zeros(0, np.int64)
    return np.stack(xs), np.asarray(ys, dtype=np.int64)


def load_python(data_dir: str | None, seed: int = 0, options: SourceOptions | None = None) -> SourceData:
    """The ``python`` source: see the module docstring."""
    options = options or SourceOptions()
    spec = options.data_factory
    if not spec:
        raise ConfigError("dataset 'python' needs --data-factory module:callable (e.g. mypkg.data:make_parties)")
    factory = resolve_factory(spec)
    parties = _parties(_call(factory, seed, data_dir), spec)
    names = [name for name, _, _ in parties]
    if len(set(names)) != len(names):
        raise DataError(f"--data-factory {spec!r}: party names repeat")
    train_parts, test_parts = [], []
    for name, train, test in parties:
        where = f"--data-factory {spec!r}, party {name!r}"
        tx, ty = _materialise(train, f"{where} train")
        if len(ty) == 0:
            raise DataError(f"{where} has no training rows")
        train_parts.append((tx, ty))
        test_parts.append(_materialise(test, f"{where} test") if test is not None else None)
    shapes = {x.shape[1:] for x, _ in train_parts} | {t[0].shape[1:] for t in test_parts if t is not None and len(t[1])}
    if len(shapes) > 1:
        raise DataError(f"--data-factory {spec!r}: parties' samples differ in shape ({', '.join(str(s) for s in sorted(shapes))})")
    sample_shape = shapes.pop()
    preprocessing: dict[str, Any] = {"data_factory": spec}
    if all(t is None for t in test_parts):
        stratified = {}
        for index, ((tx, ty), name) in enumerate(zip(train_parts, names)):
            try:
                keep, held, stratified[name] = split_party(ty, options.test_fraction, seed)
            except ValueError:
                raise DataError(
                    f"--data-factory {spec!r}, party {name!r}: too few rows ({len(ty)}) to hold out "
                    f"test_fraction={options.test_fraction}"
                ) from None
            train_parts[index] = (tx[keep], ty[keep])
            test_parts[index] = (tx[held], ty[held])
        preprocessing["split"] = {"test_fraction": options.test_fraction, "random_state": seed, "stratified": stratified}
    else:
        preprocessing["split"] = "the factory's own test sets"
    empty = (np.zeros((0, *sample_shape), np.float32), np.zeros(0, np.int64))
    test_parts = [t if t is not None and len(t[1]) else empty for t in test_parts]
    train_y = np.concatenate([y for _, y in train_parts])
    test_y = np.concatenate([y for _, y in test_parts])
    num_classes = int(max(train_y.max(), test_y.max() if len(test_y) else 0)) + 1
    classes = getattr(parties[0][1], "classes", None)
    if isinstance(classes, (list, tuple)) and len(classes) >= num_classes and all(isinstance(c, str) for c in classes):
        class_names = tuple(classes)
    else:
        class_names = tuple(str(i) for i in range(num_classes))
    return SourceData(
        name="python",
        train_x=np.concatenate([x for x, _ in train_parts]).astype(np.float32),
        train_y=train_y,
        test_x=np.concatenate([x for x, _ in test_parts]).astype(np.float32),
        test_y=test_y,
        class_names=class_names,
        train_writer=np.concatenate([np.full(len(y), i, dtype=np.int64) for i, (_, y) in enumerate(train_parts)]),
        test_writer=np.concatenate([np.full(len(y), i, dtype=np.int64) for i, (_, y) in enumerate(test_parts)]),
        writer_ids=tuple(names),
        preprocessing=preprocessing,
    )
