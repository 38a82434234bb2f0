import json
import logging
import math
import re
import shutil
import tempfile
import warnings

import lightning as L
import mlflow
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from fedlight import cli, export
from fedlight.cli import main
from fedlight.config import build_config
from fedlight.errors import ConfigError, DataError
from fedlight.experiment import run_experiment
from fedlight.export import (
    FORMAT_FILES,
    FORMATS,
    INFO_FILE,
    export_files,
    export_model,
    load_exported,
    load_for_prediction,
    load_inputs,
)
from fedlight.models import build_model

DIGITS = load_digits().images.astype(np.float32) / 16.0


def _train(tracking_uri, name="export-model"):
    config = build_config({
        "data": {"dataset": "digits", "num_clients": 3, "partition": "iid"},
        "training": {"rounds": 2, "clients_per_round": 2, "batch_size": 32, "lr": 0.1},
        "tracking": {"tracking_uri": tracking_uri, "registered_model": name, "experiment": "export"},
    })
    summary = run_experiment(config, progress=False)
    client = mlflow.MlflowClient(tracking_uri)
    client.set_registered_model_alias(name, "champion", 1)
    return summary


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A tracking store with export-model version 1 (alias champion), trained once for this module."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('registry')}/mlflow.db"
    _train(uri)
    return uri


@pytest.fixture(scope="module")
def registry_model(registry):
    mlflow.set_tracking_uri(registry)
    return mlflow.pytorch.load_model("models:/export-model/1").eval()


@pytest.fixture(scope="module")
def exported(registry, tmp_path_factory):
    """export-model@champion exported in every format (the default)."""
    out = tmp_path_factory.mktemp("exported") / "out"
    info = export_model("export-model@champion", out, tracking_uri=registry)
    return out, info


def _digits_npz(path, count):
    np.savez(path, x=DIGITS[:count])
    return str(path)


def _expected_labels(registry_model, count):
    with torch.no_grad():
        return [str(i) for i in registry_model(torch.from_numpy(DIGITS[:count])[:, None]).argmax(1).tolist()]


def test_export_writes_every_format_verified_with_its_info(exported):
    out, info = exported
    assert sorted(p.name for p in out.iterdir()) == sorted([*FORMAT_FILES.values(), INFO_FILE])  # no scratch folder
    saved = json.loads((out / INFO_FILE).read_text())
    assert saved == info
    assert info["version"] == 1 and info["registered_model"] == "export-model" and info["alias"] == "champion"
    assert info["class_names"] == [str(i) for i in range(10)] and info["input_shape"] == [1, 8, 8]
    assert "preprocessing" in info and info["formats"] == FORMAT_FILES and info["verified_on"] == [16, 1]
    assert set(info["max_abs_diff"]) == set(FORMATS) and all(d <= 1e-5 for d in info["max_abs_diff"].values())
    assert isinstance(info["onnx_opset"], int)


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_round_trips_on_any_batch_size(exported, registry_model, fmt):
    out, _ = exported
    model, info = load_exported(out / FORMAT_FILES[fmt])
    assert info["format"] == fmt and info["class_names"] == [str(i) for i in range(10)]
    # the export traced a batch of 2; these sizes need the dynamic batch dimension
    for size in (3, 1, 29):
        x = torch.from_numpy(DIGITS[:size])[:, None]
        with torch.no_grad():
            expected, got = registry_model(x), model(x)
        assert got.shape == (size, 10)
        assert torch.equal(got.argmax(1), expected.argmax(1)) and torch.allclose(got, expected, atol=1e-5), (fmt, size)


@pytest.mark.parametrize("fmt", FORMATS)
def test_predict_reads_each_format_from_a_lone_file(exported, registry_model, fmt, tmp_path, capsys):
    out, _ = exported
    lone = tmp_path / "elsewhere" / FORMAT_FILES[fmt]  # no model.json beside it: the file carries its info
    lone.parent.mkdir()
    shutil.copy(out / FORMAT_FILES[fmt], lone)
    assert main(["predict", "--model", str(lone), _digits_npz(tmp_path / "digits.npz", 7)]) == 0
    captured = capsys.readouterr()
    assert [line.split("\t")[1] for line in captured.out.strip().splitlines()] == _expected_labels(registry_model, 7)
    if fmt == "torchscript":
        assert captured.err.count("\n") == 1 and captured.err.startswith("fedlight: note: reading TorchScript")
    else:
        assert captured.err == ""


def test_predict_from_the_folder_and_the_registry_uri(exported, registry, registry_model, tmp_path, capsys):
    out, _ = exported
    expected = _expected_labels(registry_model, 6)
    assert main(["predict", "--model", str(out), _digits_npz(tmp_path / "digits.npz", 6)]) == 0
    captured = capsys.readouterr()
    assert [line.split("\t")[1] for line in captured.out.strip().splitlines()] == expected
    assert captured.err == ""  # the folder's model.pt2, not its TorchScript
    assert load_for_prediction(str(out))[1]["format"] == "pt2"

    Image.fromarray((DIGITS[0] * 255).astype(np.uint8)).save(tmp_path / "zero.png")
    assert main(["predict", "--model", "models:/export-model@champion", "--tracking-uri", registry, str(tmp_path / "zero.png")]) == 0
    assert capsys.readouterr().out.split("\t")[1] == expected[0]


def test_a_folder_exported_before_pt2_and_onnx_still_predicts(tmp_path):
    """model.pt without embedded info and a model.json without "formats", as the TorchScript-only export wrote them."""
    model = build_model("logreg", (1, 8, 8), 10).eval()
    with export._torchscript_quietly():
        torch.jit.save(torch.jit.trace(model, torch.rand(2, 1, 8, 8)), str(tmp_path / "model.pt"))
    (tmp_path / "model.json").write_text(json.dumps({"class_names": list("abcdefghij"), "input_shape": [1, 8, 8],
                                                     "format": "torchscript", "verified_on": 16}))
    loaded, info = load_for_prediction(str(tmp_path))
    x = torch.rand(4, 1, 8, 8)
    assert info["format"] == "torchscript" and torch.allclose(loaded(x), model(x))
    assert load_exported(tmp_path / "model.pt")[1]["class_names"] == list("abcdefghij")  # from the sidecar


def test_loading_pt2_or_onnx_warns_nothing_and_torchscript_hides_only_its_deprecation(exported, caplog):
    out, _ = exported
    x = torch.from_numpy(DIGITS[:2])[:, None]
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        for fmt in ("pt2", "onnx"):
            model, _ = load_exported(out / FORMAT_FILES[fmt])
            model(x)
    assert [str(w.message) for w in caught] == [] and [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_exported(out / FORMAT_FILES["torchscript"])
        with export._torchscript_quietly():
            warnings.warn("`torch.jit.load` is deprecated. Please switch to `torch.export`.", FutureWarning, stacklevel=1)
            warnings.warn("something else", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something else"]


def test_cli_export_writes_the_chosen_formats_and_replaces_the_rest(registry, tmp_path, capsys, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    out = tmp_path / "o"
    args = ["export", "--model", "export-model/1", "--out", str(out), "--tracking-uri", registry]
    assert main([*args, "--format", "pt2", "--format", "torchscript"]) == 0
    printed = capsys.readouterr().out
    assert "model.pt2 (torch.export), model.pt (TorchScript)" in printed and "batches of 16 and 1" in printed
    assert "torch deprecates TorchScript" in printed
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.pt", "model.pt2"]
    assert list(scratch.iterdir()) == []  # no temporary folder left behind

    assert main([*args, "--format", "onnx"]) == 0
    assert "TorchScript" not in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.onnx"]
    assert json.loads((out / "model.json").read_text())["formats"] == {"onnx": "model.onnx"}


def test_a_failed_export_leaves_the_folder_as_it_was(tmp_path, monkeypatch):
    model = build_model("mlp", (13,), 3).eval()
    info = {"input_shape": [13], "class_names": ["a", "b", "c"]}
    out = tmp_path / "out"
    export_files(model, info, out, ["pt2"])
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    # ONNX is written after model.pt2 and found not to reproduce the model: nothing of this export lands
    monkeypatch.setitem(export._LOADERS, "onnx", lambda path: (lambda x: torch.zeros(len(x), 3), None))
    with pytest.raises(ConfigError, match="ONNX model does not reproduce"):
        export_files(model, info, out, ["pt2", "onnx"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    # without the dynamic batch dimension, the graph fixes the traced batch of 2 and the check's batch of 16 fails
    monkeypatch.setattr(export, "_batch_dim", lambda: None)
    with pytest.raises(ConfigError, match="torch.export model fails on a batch of 16"):
        export_files(model, info, out, ["pt2"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    class DataDependent(torch.nn.Module):
        def forward(self, x):
            return x[:, :3] if x.sum() > 0 else -x[:, :3]

    with pytest.raises(ConfigError, match="cannot be exported to torch.export"):
        export_files(DataDependent(), info, tmp_path / "new", ["pt2"])
    assert not (tmp_path / "new").exists()


class TinyLightning(L.LightningModule):
    """A user's LightningModule: Lightning's own trace makes its TorchScript (no Trainer attached)."""

    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(math.prod(input_shape), num_classes))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return torch.nn.functional.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize(
    "spec, shape, classes",
    [("small_cnn", (1, 8, 8), 10), ("leaf_cnn", (1, 8, 8), 62), ("logreg", (13,), 2),
     ({"class_path": "mlp", "init_args": {"hidden": [16, 8]}}, (13,), 3), (TinyLightning, (1, 8, 8), 4)],
    ids=["small_cnn", "leaf_cnn", "logreg", "mlp", "lightning"],
)
def test_every_builtin_model_exports_to_every_format(spec, shape, classes, tmp_path):
    model = build_model(spec, shape, classes).eval()
    info = export_files(model, {"input_shape": list(shape), "class_names": [str(i) for i in range(classes)]}, tmp_path)
    assert set(info["formats"]) == set(FORMATS) and all(d <= 1e-5 for d in info["max_abs_diff"].values())
    x = torch.randn(5, *shape, generator=torch.Generator().manual_seed(1))
    for fmt in FORMATS:
        loaded, _ = load_exported(tmp_path / FORMAT_FILES[fmt])
        with torch.no_grad():
            assert torch.allclose(loaded(x), model(x), atol=1e-5), fmt


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "nope.pt2", "model file not found: "),
        (lambda d: d / "nope.onnx", "model file not found: "),
        (lambda d: _write(d / "notes.txt", b"hello"), "not an exported model file (.pt2, .onnx or .pt)"),
        (lambda d: _write(d / "fake.pt2", b"not a zip"), "not a torch.export archive (.pt2)"),
        (lambda d: _copy(d, "model.onnx", "onnx.pt2"), "not a torch.export archive (.pt2)"),
        (lambda d: _copy(d, "model.pt", "torchscript.pt2"), "not a torch.export archive (.pt2)"),
        (lambda d: _copy(d, "model.pt2", "pt2.onnx"), "as ONNX: "),
        (lambda d: _write(d / "fake.pt", b"not a zip"), "as TorchScript: "),
        (lambda d: _copy(d, "model.pt2", "pt2.pt"), "as TorchScript: "),
        (lambda d: (d / "empty").mkdir() or d / "empty", "is not an exported model folder (needs model.json and "),
    ],
)
def test_a_bad_model_path_is_one_line_and_exit_2(exported, tmp_path, capfd, make, message):
    out, _ = exported
    (tmp_path / "src").symlink_to(out)
    path = make(tmp_path)
    assert main(["predict", "--model", str(path), _digits_npz(tmp_path / "d.npz", 2)]) == 2
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith("fedlight: error: ") and message in captured.err, captured.err
    with pytest.raises(DataError, match=re.escape(message)):
        load_for_prediction(str(path))  # fedlight.export refuses it alike, without the CLI's precheck


def _write(path, data):
    path.write_bytes(data)
    return path


def _copy(folder, source, name):
    shutil.copy(folder / "src" / source, folder / name)
    return folder / name


def test_export_and_predict_errors(tmp_path, tracking_uri, capsys):
    assert main(["export", "--model", "missing@champion", "--out", str(tmp_path), "--tracking-uri", tracking_uri]) == 2
    assert "not found in the registry" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:  # argparse refuses it, before main's handler runs
        main(["export", "--model", "m@champion", "--out", str(tmp_path / "x"), "--format", "tflite"])
    assert refused.value.code == 2
    assert "invalid choice: 'tflite'" in capsys.readouterr().err
    assert main(["predict", "--model", str(tmp_path), "x.png"]) == 2
    assert "not an exported model folder" in capsys.readouterr().err


def test_the_clis_copies_agree_with_fedlight_export():
    assert cli._EXPORT_FILES == export.FORMAT_FILES and cli._EXPORT_INFO == export.INFO_FILE
    assert export.parse_formats(None) == export.parse_formats(["all"]) == FORMATS
    assert export.parse_formats(["torchscript", "pt2", "pt2"]) == ("pt2", "torchscript")
    with pytest.raises(ConfigError, match="--format must be one of"):
        export.parse_formats(["tflite"])


def test_inputs_are_inverted_when_dark_on_light(tmp_path):
    image = np.full((8, 8), 255, dtype=np.uint8)
    image[2:6, 3] = 0  # a dark stroke on white paper
    Image.fromarray(image).save(tmp_path / "paper.png")
    batch, labels = load_inputs([str(tmp_path / "paper.png")], [1, 8, 8])
    assert batch.shape == (1, 1, 8, 8) and batch[0, 0, 3, 3] == 1.0 and batch[0, 0, 0, 0] == 0.0
    assert labels == [str(tmp_path / "paper.png")]


def test_load_for_prediction_rejects_garbage():
    with pytest.raises(DataError, match="neither an exported folder nor a model URI"):
        load_for_prediction("no-such-thing")
    with pytest.raises(DataError, match="predict reads images"):
        load_inputs(["pyproject.toml"], [13])
