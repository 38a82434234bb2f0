import json
import tempfile

import mlflow
import numpy as np
import torch
from PIL import Image

from fedlight.cli import main
from fedlight.config import build_config
from fedlight.experiment import run_experiment
from fedlight.export import export_model, load_for_prediction, load_inputs


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


def test_export_round_trip_and_predict(tmp_path, tracking_uri, capsys):
    _train(tracking_uri)
    info = export_model("export-model@champion", tmp_path / "out", tracking_uri=tracking_uri)
    assert info["version"] == 1 and info["class_names"] == [str(i) for i in range(10)] and info["input_shape"] == [1, 8, 8]
    assert (tmp_path / "out" / "model.pt").is_file()
    saved = json.loads((tmp_path / "out" / "model.json").read_text())
    assert saved["verified_on"] == 16 and "preprocessing" in saved

    from sklearn.datasets import load_digits

    digits = load_digits()
    np.savez(tmp_path / "digits.npz", x=digits.images[:6].astype(np.float32) / 16.0)
    registry_model = mlflow.pytorch.load_model("models:/export-model/1").eval()
    expected = registry_model(torch.from_numpy(digits.images[:6].astype(np.float32) / 16.0)[:, None]).argmax(1).tolist()

    assert main(["predict", "--model", str(tmp_path / "out"), str(tmp_path / "digits.npz")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[1] for line in lines] == [str(i) for i in expected]

    # the same through the registry URI, and a PNG input
    Image.fromarray((digits.images[0] * 16).clip(0, 255).astype(np.uint8)).save(tmp_path / "zero.png")
    assert main(["predict", "--model", "models:/export-model@champion", "--tracking-uri", tracking_uri, str(tmp_path / "zero.png")]) == 0
    assert capsys.readouterr().out.split("\t")[1] == str(expected[0])


def test_export_by_version_and_cli(tmp_path, tracking_uri, capsys, monkeypatch):
    _train(tracking_uri, name="cli-export")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    assert main(["export", "--model", "cli-export/1", "--out", str(tmp_path / "o"), "--tracking-uri", tracking_uri]) == 0
    assert "predictions match" in capsys.readouterr().out
    assert list(scratch.iterdir()) == []  # no temporary folder left behind


def test_export_and_predict_errors(tmp_path, tracking_uri, capsys):
    assert main(["export", "--model", "missing@champion", "--out", str(tmp_path), "--tracking-uri", tracking_uri]) == 2
    assert "not found in the registry" in capsys.readouterr().err
    assert main(["predict", "--model", str(tmp_path), "x.png"]) == 2
    assert "not an exported model folder" in capsys.readouterr().err


def test_inputs_are_inverted_when_dark_on_light(tmp_path):
    image = np.full((8, 8), 255, dtype=np.uint8)
    image[2:6, 3] = 0  # a dark stroke on white paper
    Image.fromarray(image).save(tmp_path / "paper.png")
    batch, labels = load_inputs([str(tmp_path / "paper.png")], [1, 8, 8])
    assert batch.shape == (1, 1, 8, 8) and batch[0, 0, 3, 3] == 1.0 and batch[0, 0, 0, 0] == 0.0
    assert labels == [str(tmp_path / "paper.png")]


def test_load_for_prediction_rejects_garbage(tmp_path):
    import pytest

    from fedlight.errors import DataError

    with pytest.raises(DataError):
        load_for_prediction("no-such-thing")
