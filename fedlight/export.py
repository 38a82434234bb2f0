"""Model registry export and prediction.

``export_model`` loads a registered model (``NAME@ALIAS`` or ``NAME/VERSION``)
and writes it, into one folder, in up to three formats, each checked to
reproduce the registry model's predictions on a batch of ``check_batch``
random inputs and on a single input (every format takes any batch size):

* ``model.pt2``: :func:`torch.export.export` with a dynamic batch dimension,
  saved by :func:`torch.export.save`; ``torch.export.load(path).module()``
  runs it in PyTorch without fedlight's classes.
* ``model.onnx``: :func:`torch.onnx.export` with the dynamo exporter (input
  ``input``, output ``logits``, batch axis ``batch``), for ONNX Runtime and
  the other ONNX runtimes.
* ``model.pt``: TorchScript (:func:`torch.jit.trace`), which torch deprecates;
  kept for consumers that still load TorchScript (C++ ``torch::jit::load``).

``model.json`` beside them holds the class names, input shape, preprocessing,
the registry source and what was verified; each model file also carries the
same information inside itself (an extra file, or ONNX metadata ``fedlight``),
so that a single file copied elsewhere still predicts. ``predict`` runs an
exported folder, one exported file, or any MLflow model URI on PNG images or
npz arrays.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedlight.errors import ConfigError, DataError

FORMATS = ("pt2", "onnx", "torchscript")
FORMAT_FILES = {"pt2": "model.pt2", "onnx": "model.onnx", "torchscript": "model.pt"}
FORMAT_NAMES = {"pt2": "torch.export", "onnx": "ONNX", "torchscript": "TorchScript"}
INFO_FILE = "model.json"
EMBEDDED_INFO = "fedlight.json"  # the extra file (pt2, TorchScript) or ONNX metadata key that carries model.json
_TORCHSCRIPT_DEPRECATION = r"`torch\.jit\.\w+` is (deprecated|not supported in Python)"
_LIGHTNING_TORCHSCRIPT_DEPRECATION = r"`LightningModule\.to_torchscript` has been deprecated"

Predictor = Callable[[torch.Tensor], torch.Tensor]


@contextmanager
def _torchscript_quietly() -> Iterator[None]:
    """Ignore the deprecation of TorchScript (torch's `torch.jit.X` FutureWarnings, Lightning's of `to_torchscript`).

    fedlight writes and reads TorchScript on purpose, for the consumers that
    still need it; the deprecation is said once where the user chooses the
    format (the CLI's export line, ``predict``'s note, the README).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_TORCHSCRIPT_DEPRECATION, category=FutureWarning)
        warnings.filterwarnings("ignore", message=_LIGHTNING_TORCHSCRIPT_DEPRECATION, category=DeprecationWarning)
        yield


@contextmanager
def _quiet_downloads() -> Iterator[None]:
    """No MLflow progress bar for the model's few small artifacts, unless the user set MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    if key in os.environ:
        yield
        return
    os.environ[key] = "false"
    try:
        yield
    finally:
        os.environ.pop(key, None)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _registry_uri(spec: str) -> tuple[str, str, str | None, str | None]:
    """``NAME@ALIAS`` or ``NAME/VERSION`` -> (models:/ URI, name, alias, version)."""
    match = re.fullmatch(r"([^@/]+)(?:@([\w-]+)|/(\d+))?", spec)
    if not match:
        raise ConfigError(f"--model must be NAME, NAME@ALIAS or NAME/VERSION, got {spec!r}")
    name, alias, version = match.groups()
    if alias is None and version is None:
        alias = "champion"
    return (f"models:/{name}@{alias}" if alias else f"models:/{name}/{version}"), name, alias, version


def _resolve_version(client, name: str, alias: str | None, version: str | None):
    import mlflow.exceptions

    try:
        return client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except mlflow.exceptions.MlflowException as exc:
        raise ConfigError(f"model {name}{'@' + alias if alias else '/' + str(version)} not found in the registry: {exc.message}") from None


def _model_info(run_id: str) -> dict[str, Any]:
    """The ``model_info.json`` (classes, input shape, preprocessing) a fedlight run logged."""
    import mlflow

    # download_artifacts without dst_path leaves a temporary folder behind
    with tempfile.TemporaryDirectory(prefix="fedlight-model-info-") as folder:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="model_info.json", dst_path=folder)
        return json.loads(Path(path).read_text())


def parse_formats(formats: Iterable[str] | None) -> tuple[str, ...]:
    """``None``, ``"all"`` or format names -> the distinct formats in :data:`FORMATS` order."""
    chosen = set(FORMATS) if formats is None else set(formats)
    if "all" in chosen:
        chosen = set(FORMATS)
    unknown = sorted(chosen - set(FORMATS))
    if unknown or not chosen:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)} or all, got {', '.join(unknown) or 'nothing'}")
    return tuple(f for f in FORMATS if f in chosen)


# --- writing -------------------------------------------------------------------


def _batch_dim() -> dict[int, Any]:
    return {0: torch.export.Dim("batch", min=1)}


def _write_pt2(model: torch.nn.Module, example: torch.Tensor, path: Path, meta: str) -> dict[str, Any]:
    program = torch.export.export(model, (example,), dynamic_shapes=(_batch_dim(),))
    torch.export.save(program, path, extra_files={EMBEDDED_INFO: meta})
    return {}


def _write_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path, meta: str) -> dict[str, Any]:
    program = torch.onnx.export(model, (example,), dynamo=True, dynamic_shapes=(_batch_dim(),),
                                input_names=["input"], output_names=["logits"], verbose=False)
    program.model.metadata_props[EMBEDDED_INFO] = meta
    # weights inside the one file; ONNX itself moves them to model.onnx.data above protobuf's 2 GB
    program.save(path, external_data=False)
    return {"onnx_opset": program.model.opset_imports.get("")}


def _write_torchscript(model: torch.nn.Module, example: torch.Tensor, path: Path, meta: str) -> dict[str, Any]:
    from fedlight.models import is_lightning_module

    with _torchscript_quietly(), torch.no_grad():
        if is_lightning_module(model):  # Lightning's own trace, where its `trainer` property need not be attached
            traced = model.to_torchscript(method="trace", example_inputs=example)
        else:
            traced = torch.jit.trace(model, example)
        torch.jit.save(traced, str(path), _extra_files={EMBEDDED_INFO: meta})
    return {}


_WRITERS = {"pt2": _write_pt2, "onnx": _write_onnx, "torchscript": _write_torchscript}


def _verify(fmt: str, loaded: Predictor, model: torch.nn.Module, inputs: torch.Tensor, source: str) -> float:
    """The largest |logit difference| of ``loaded`` against ``model`` on ``inputs`` and on its first row alone."""
    worst = 0.0
    for batch in (inputs, inputs[:1]):
        with torch.no_grad():
            expected = model(batch)
            try:
                got = loaded(batch)
            except Exception as exc:  # noqa: BLE001 - e.g. a batch size the exported graph fixed
                raise ConfigError(f"the exported {FORMAT_NAMES[fmt]} model fails on a batch of {len(batch)} (nothing written; "
                                  f"--format chooses the other formats): {type(exc).__name__}: {_first_line(exc)}") from None
        if (got.shape != expected.shape or not torch.equal(expected.argmax(1), got.argmax(1))
                or not torch.allclose(expected, got, atol=1e-5)):
            raise ConfigError(
                f"the exported {FORMAT_NAMES[fmt]} model does not reproduce the outputs of {source} on a batch of "
                f"{len(batch)} (nothing written; --format chooses the other formats)"
            )
        worst = max(worst, float((got - expected).abs().max()))
    return worst


def export_files(model: torch.nn.Module, info: dict[str, Any], out_dir: str | Path, formats: Iterable[str] | None = None,
                 *, check_batch: int = 16, source: str = "the model") -> dict[str, Any]:
    """Write ``model`` in ``formats`` (default all) into ``out_dir`` with ``model.json``; returns that info.

    ``info`` needs ``input_shape`` (and, for ``predict``, ``class_names``).
    Every file is written into a scratch folder, reloaded and checked against
    ``model`` on ``check_batch`` seeded random inputs and on a single one;
    only when all pass do they replace the folder's files (a format not
    chosen this time is removed, so the folder is one export). A failure
    leaves ``out_dir`` as it was. 16 inputs catch a wrong layer or weight and
    keep the check well under a second.
    """
    formats = parse_formats(formats)
    if check_batch < 3:
        raise ConfigError(f"check_batch must be at least 3 (the export traces a batch of 2), got {check_batch}")
    model = model.eval()
    inputs = torch.rand(check_batch, *info["input_shape"], generator=torch.Generator().manual_seed(0))
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".fedlight-export-", dir=out_dir))
    result = {k: v for k, v in info.items() if k not in ("format", "formats", "max_abs_diff", "verified_on")}
    result.update({"formats": {}, "max_abs_diff": {}, "verified_on": [check_batch, 1], "torch_version": torch.__version__})
    done = False
    try:
        for fmt in formats:
            path = staging / FORMAT_FILES[fmt]
            meta = json.dumps({**result, "formats": {fmt: FORMAT_FILES[fmt]}, "format": fmt, "max_abs_diff": {}})
            try:
                result.update(_WRITERS[fmt](model, inputs[:2], path, meta))
            except Exception as exc:  # noqa: BLE001 - a model the exporter cannot take is the user's to route elsewhere
                raise ConfigError(f"{source} cannot be exported to {FORMAT_NAMES[fmt]} (nothing written; --format chooses "
                                  f"the other formats): {type(exc).__name__}: {_first_line(exc)}") from None
            result["max_abs_diff"][fmt] = _verify(fmt, _LOADERS[fmt](path)[0], model, inputs, source)
            result["formats"][fmt] = FORMAT_FILES[fmt]
        (staging / INFO_FILE).write_text(json.dumps(result, indent=2))
        for fmt in FORMATS:
            if fmt not in formats:
                (out_dir / FORMAT_FILES[fmt]).unlink(missing_ok=True)
        for item in sorted(staging.iterdir(), key=lambda p: p.name == INFO_FILE):  # model.json last
            os.replace(item, out_dir / item.name)
        done = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not done and created:
            shutil.rmtree(out_dir, ignore_errors=True)
    return result


def export_model(spec: str, out_dir: str | Path, formats: Iterable[str] | None = None, *,
                 tracking_uri: str | None = None, check_batch: int = 16) -> dict[str, Any]:
    """Export a registry model (``NAME@ALIAS`` or ``NAME/VERSION``) with :func:`export_files`; returns model.json's info."""
    import mlflow

    from fedlight.tracking import resolve_tracking_uri

    formats = parse_formats(formats)
    uri, name, alias, version = _registry_uri(spec)
    mlflow.set_tracking_uri(resolve_tracking_uri(tracking_uri))
    client = mlflow.MlflowClient()
    model_version = _resolve_version(client, name, alias, version)
    with _quiet_downloads():
        model = mlflow.pytorch.load_model(uri).eval()
        info = _model_info(model_version.run_id)
    info.update({"registered_model": name, "version": int(model_version.version), "alias": alias,
                 "source_run_id": model_version.run_id})
    return export_files(model, info, out_dir, formats, check_batch=check_batch,
                        source=f"registry model {name} version {model_version.version}")


# --- reading -------------------------------------------------------------------


def _embedded(text: str | bytes | None, path: Path) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        raise DataError(f"{path}: its embedded {EMBEDDED_INFO} is not valid JSON") from None


def _load_pt2(path: Path) -> tuple[Predictor, dict[str, Any] | None]:
    # torch.export.load logs a traceback before it raises on a file that is not its archive; refuse those first
    if not zipfile.is_zipfile(path) or not any(n.rsplit("/", 1)[-1] == "archive_format" for n in zipfile.ZipFile(path).namelist()):
        raise DataError(f"cannot read {path}: not a torch.export archive (.pt2)")
    extra = {EMBEDDED_INFO: ""}
    try:
        program = torch.export.load(path, extra_files=extra)
    except Exception as exc:  # noqa: BLE001 - a damaged file is the user's input
        raise DataError(f"cannot read {path} as torch.export (.pt2): {_first_line(exc)}") from None
    return program.module(), _embedded(extra.get(EMBEDDED_INFO), path)


class OnnxModel:
    """An ONNX Runtime session (CPU) called like a module: a float tensor in, a logits tensor out."""

    def __init__(self, path: str | Path):
        import onnxruntime

        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own classes for a bad file
            raise DataError(f"cannot read {path} as ONNX: {_first_line(exc)}") from None
        self.input_name = self.session.get_inputs()[0].name
        self.metadata = self.session.get_modelmeta().custom_metadata_map

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().cpu().numpy().astype(np.float32, copy=False)
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])


def _load_onnx(path: Path) -> tuple[Predictor, dict[str, Any] | None]:
    model = OnnxModel(path)
    return model, _embedded(model.metadata.get(EMBEDDED_INFO), path)


def _load_torchscript(path: Path) -> tuple[Predictor, dict[str, Any] | None]:
    extra = {EMBEDDED_INFO: ""}
    try:
        with _torchscript_quietly():
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as exc:  # noqa: BLE001 - a damaged file, or a torch.save pickle, is the user's input
        raise DataError(f"cannot read {path} as TorchScript: {_first_line(exc)}") from None
    return module.eval(), _embedded(extra.get(EMBEDDED_INFO), path)


_LOADERS: dict[str, Callable[[Path], tuple[Predictor, dict[str, Any] | None]]] = {
    "pt2": _load_pt2, "onnx": _load_onnx, "torchscript": _load_torchscript,
}
_SUFFIXES = {Path(name).suffix: fmt for fmt, name in FORMAT_FILES.items()}


def _read_info(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise DataError(f"{path} is not valid JSON") from None


def load_exported(path: str | Path) -> tuple[Predictor, dict[str, Any]]:
    """One exported file (.pt2, .onnx or .pt) -> (predictor, info); info from inside the file, else model.json beside it."""
    path = Path(path)
    fmt = _SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"--model {path}: not an exported model file (.pt2, .onnx or .pt)")
    if not path.is_file():
        raise DataError(f"model file not found: {path}")
    model, info = _LOADERS[fmt](path)
    if info is None:  # a file exported before fedlight embedded its info
        sidecar = path.parent / INFO_FILE
        if not sidecar.is_file():
            raise DataError(f"{path} carries no fedlight model info and has no {INFO_FILE} beside it")
        info = _read_info(sidecar)
    return model, {**info, "format": fmt}


def _load_folder(path: Path) -> tuple[Predictor, dict[str, Any]]:
    """An exported folder: model.json and the first of its formats present, in :data:`FORMATS` order."""
    present = [fmt for fmt in FORMATS if (path / FORMAT_FILES[fmt]).is_file()]
    if not (path / INFO_FILE).is_file() or not present:
        raise DataError(f"{path} is not an exported model folder (needs {INFO_FILE} and "
                        f"{', '.join(FORMAT_FILES[f] for f in FORMATS[:-1])} or {FORMAT_FILES[FORMATS[-1]]})")
    info = _read_info(path / INFO_FILE)
    listed = info.get("formats") or {"torchscript": FORMAT_FILES["torchscript"]}  # folders exported with TorchScript only
    usable = [fmt for fmt in present if fmt in listed]
    if not usable:
        raise DataError(f"{path}: {INFO_FILE} lists {', '.join(listed)}, whose files are missing")
    model, _ = _LOADERS[usable[0]](path / FORMAT_FILES[usable[0]])
    return model, {**info, "format": usable[0]}


def load_for_prediction(model: str, *, tracking_uri: str | None = None) -> tuple[Predictor, dict[str, Any]]:
    """An exported folder, one exported file (.pt2, .onnx, .pt) or an MLflow model URI (models:/..., runs:/...).

    The info's ``format`` says what was loaded (``pt2``, ``onnx``,
    ``torchscript``, or ``mlflow`` for a URI).
    """
    path = Path(model)
    if path.is_dir():
        return _load_folder(path)
    if "://" in model or ":/" in model:
        return _load_uri(model, tracking_uri)
    if path.suffix.lower() in _SUFFIXES or path.is_file():
        return load_exported(path)
    raise DataError(f"--model {model!r} is neither an exported folder nor a model URI (models:/NAME@ALIAS) "
                    "nor an exported model file (.pt2, .onnx, .pt)")


def _load_uri(model: str, tracking_uri: str | None) -> tuple[Predictor, dict[str, Any]]:
    import mlflow

    from fedlight.tracking import resolve_tracking_uri

    mlflow.set_tracking_uri(resolve_tracking_uri(tracking_uri))
    try:
        with _quiet_downloads():
            loaded = mlflow.pytorch.load_model(model).eval()
            if model.startswith("models:/"):
                _, name, alias, version = _registry_uri(model.removeprefix("models:/"))
                run_id = _resolve_version(mlflow.MlflowClient(), name, alias, version).run_id
            else:
                run_id = model.removeprefix("runs:/").split("/")[0]
            info = _model_info(run_id)
    except mlflow.exceptions.MlflowException as exc:
        raise DataError(f"cannot load model {model}: {exc.message}") from None
    return loaded, {**info, "format": "mlflow"}


def load_inputs(paths: list[str], input_shape: list[int], invert: str = "auto") -> tuple[torch.Tensor, list[str]]:
    """PNG files or npz arrays -> a float batch in the model's preprocessing, with a label per item."""
    from PIL import Image, UnidentifiedImageError

    if len(input_shape) != 3:
        raise DataError(f"predict reads images (PNG, npz arrays); this model takes inputs of shape {list(input_shape)}")
    _, height, width = input_shape
    images, labels = [], []
    for item in paths:
        path = Path(item)
        if not path.is_file():
            raise DataError(f"input not found: {path}")
        if path.suffix.lower() == ".npz":
            try:
                with np.load(path, allow_pickle=False) as arrays:
                    key = "x" if "x" in arrays.files else arrays.files[0]
                    array = arrays[key]
            except Exception as exc:
                raise DataError(f"cannot read {path}: {exc}") from None
            array = array[None] if array.ndim == 2 else array.reshape(-1, *array.shape[-2:])
            for i, image in enumerate(array):
                images.append(_prepare(image.astype(np.float32), height, width, invert, path))
                labels.append(f"{path}[{i}]")
        else:
            try:
                with Image.open(path) as img:
                    array = np.asarray(img.convert("L"), dtype=np.float32)
            except (UnidentifiedImageError, OSError) as exc:
                raise DataError(f"cannot read image {path}: {exc}") from None
            images.append(_prepare(array, height, width, invert, path))
            labels.append(str(path))
    return torch.from_numpy(np.stack(images)[:, None]), labels


def _prepare(image: np.ndarray, height: int, width: int, invert: str, path: Path) -> np.ndarray:
    from PIL import Image

    peak = image.max()
    scaled = image / (255.0 if peak > 1.0 else 1.0) if peak > 0 else image
    if scaled.shape != (height, width):
        scaled = np.asarray(Image.fromarray((scaled * 255).astype(np.uint8)).resize((width, height), Image.BILINEAR), dtype=np.float32) / 255.0
    # Models are trained with ink = 1 on a dark background; dark ink on white paper is flipped.
    if invert == "yes" or (invert == "auto" and scaled.mean() > 0.5):
        scaled = 1.0 - scaled
    return scaled.astype(np.float32)


def predict(model: Predictor, info: dict[str, Any], batch: torch.Tensor) -> list[tuple[str, float]]:
    """(class name, softmax probability) of the most likely class, per row of ``batch``."""
    with torch.no_grad():
        probabilities = torch.softmax(model(batch), dim=1)
    confidence, index = probabilities.max(dim=1)
    names = info["class_names"]
    return [(names[i], float(c)) for i, c in zip(index.tolist(), confidence)]
