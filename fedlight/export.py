"""Model registry export and prediction.

``export_model`` loads a registered model (``NAME@ALIAS`` or ``NAME/VERSION``),
writes it as TorchScript with a JSON sidecar (class names, input shape,
preprocessing) and checks that the exported file reproduces the registry
model's predictions. ``predict`` runs an exported folder, or any MLflow model
URI, on PNG images or npz arrays.
"""

from __future__ import annotations

import json
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedlight.errors import ConfigError, DataError

# TorchScript is deprecated in favour of torch.export, but it is the portable
# single-file format the export promises (loadable from C++ and without fedlight).
warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)

MODEL_FILE = "model.pt"
INFO_FILE = "model.json"


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


def export_model(spec: str, out_dir: str | Path, *, tracking_uri: str | None = None, check_batch: int = 16) -> dict[str, Any]:
    """Export a registry model to TorchScript and verify it; returns the sidecar info."""
    import mlflow

    from fedlight.tracking import resolve_tracking_uri

    uri, name, alias, version = _registry_uri(spec)
    mlflow.set_tracking_uri(resolve_tracking_uri(tracking_uri))
    client = mlflow.MlflowClient()
    model_version = _resolve_version(client, name, alias, version)
    model = mlflow.pytorch.load_model(uri).eval()
    info = _model_info(model_version.run_id)
    info.update({"registered_model": name, "version": int(model_version.version), "alias": alias,
                 "source_run_id": model_version.run_id, "format": "torchscript"})

    example = torch.rand(check_batch, *info["input_shape"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        scripted = torch.jit.trace(model, example[:1])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.jit.save(scripted, str(out_dir / MODEL_FILE))
    (out_dir / INFO_FILE).write_text(json.dumps(info, indent=2))

    reloaded = torch.jit.load(str(out_dir / MODEL_FILE)).eval()
    with torch.no_grad():
        expected, got = model(example), reloaded(example)
    if not torch.equal(expected.argmax(1), got.argmax(1)) or not torch.allclose(expected, got, atol=1e-5):
        raise RuntimeError("the exported TorchScript model does not reproduce the registry model's outputs")
    info["verified_on"] = check_batch
    (out_dir / INFO_FILE).write_text(json.dumps(info, indent=2))
    return info


def load_for_prediction(model: str, *, tracking_uri: str | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """An exported folder (model.pt + model.json), or an MLflow model URI (models:/..., runs:/...)."""
    path = Path(model)
    if path.is_dir():
        if not (path / MODEL_FILE).is_file() or not (path / INFO_FILE).is_file():
            raise DataError(f"{path} is not an exported model folder (needs {MODEL_FILE} and {INFO_FILE})")
        return torch.jit.load(str(path / MODEL_FILE)).eval(), json.loads((path / INFO_FILE).read_text())
    if "://" not in model and ":/" not in model:
        raise DataError(f"--model {model!r} is neither an exported folder nor a model URI (models:/NAME@ALIAS)")
    import mlflow

    from fedlight.tracking import resolve_tracking_uri

    mlflow.set_tracking_uri(resolve_tracking_uri(tracking_uri))
    try:
        loaded = mlflow.pytorch.load_model(model).eval()
        if model.startswith("models:/"):
            _, name, alias, version = _registry_uri(model.removeprefix("models:/"))
            run_id = _resolve_version(mlflow.MlflowClient(), name, alias, version).run_id
        else:
            run_id = model.removeprefix("runs:/").split("/")[0]
        info = _model_info(run_id)
    except mlflow.exceptions.MlflowException as exc:
        raise DataError(f"cannot load model {model}: {exc.message}") from None
    return loaded, info


def load_inputs(paths: list[str], input_shape: list[int], invert: str = "auto") -> tuple[torch.Tensor, list[str]]:
    """PNG files or npz arrays -> a float batch in the model's preprocessing, with a label per item."""
    from PIL import Image, UnidentifiedImageError

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


def predict(model: torch.nn.Module, info: dict[str, Any], batch: torch.Tensor) -> list[tuple[str, float]]:
    with torch.no_grad():
        probabilities = torch.softmax(model(batch), dim=1)
    confidence, index = probabilities.max(dim=1)
    names = info["class_names"]
    return [(names[i], float(c)) for i, c in zip(index.tolist(), confidence)]
