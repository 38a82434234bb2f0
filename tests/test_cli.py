import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest

from fedlight.cli import main

TINY = ["--dataset", "digits", "--num-clients", "4", "--clients-per-round", "2", "--rounds", "2", "--no-progress"]


def _runs(uri):
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(search_all_experiments=True)


def test_run_digits_end_to_end(tmp_path, tracking_uri):
    out = tmp_path / "summary.json"
    code = main(["run", *TINY, "--tracking-uri", tracking_uri, "--experiment", "cli-test",
                 "--registered-model", "cli-model", "--output-json", str(out)])
    assert code == 0
    summary = json.loads(out.read_text())
    assert {"run_id", "experiment", "strategy", "rounds", "final", "history", "wall_time_s"} <= set(summary)
    assert summary["model_uri"].startswith("models:/")
    assert set(summary["final"]) == {"accuracy", "precision", "recall", "f1", "loss"}
    assert [row["round"] for row in summary["history"]] == [1, 2]

    client = mlflow.MlflowClient(tracking_uri)
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["strategy"] == "fedavg" and run.data.tags["dataset"] == "digits"
    assert run.data.params["training.rounds"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "test_accuracy")] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)} | {
        a.path for d in ("plots", "config") for a in client.list_artifacts(run.info.run_id, d)}
    assert {"plots/convergence.png", "config/resolved.yaml", "history.json"} <= artifacts
    versions = client.search_model_versions("name='cli-model'")
    assert len(versions) == 1 and versions[0].run_id == run.info.run_id
    model = mlflow.pytorch.load_model("models:/cli-model/1")
    assert type(model).__name__ == "SmallCNN"
    # logged with fedlight's own requirements (no inference), and servable through pyfunc
    requirements = Path(mlflow.pyfunc.get_model_dependencies("models:/cli-model/1")).read_text()
    assert "torch==" in requirements and "fedlight==" in requirements
    served = mlflow.pyfunc.load_model("models:/cli-model/1").predict(np.zeros((2, 1, 8, 8), dtype=np.float32))
    assert np.asarray(served).shape == (2, 10)


def test_adaptive_run_logs_corrupted_parties_and_alphas(tmp_path, tracking_uri):
    out = tmp_path / "summary.json"
    code = main(["run", *TINY, "--strategy", "adaptive", "--noisy-client-fraction", "0.5", "--label-noise", "1",
                 "--tracking-uri", tracking_uri, "--registered-model", "", "--output-json", str(out)])
    assert code == 0
    client = mlflow.MlflowClient(tracking_uri)
    run_id = json.loads(out.read_text())["run_id"]
    clients = json.loads(Path(client.download_artifacts(run_id, "data/clients.json", str(tmp_path))).read_text())
    assert len(clients["corrupted_clients"]) == 2 and len(clients["corrupted_client_names"]) == 2
    mlflow.set_tracking_uri(tracking_uri)
    table = mlflow.load_table("party_metrics.json", run_ids=[run_id])
    alphas = table[table["metric"] == "alpha"]
    assert len(alphas) and all(bool(flag) == (int(c) in clients["corrupted_clients"])
                               for c, flag in zip(alphas["client"], alphas["corrupted"]))
    assert "plots/alpha_trajectories.png" in {a.path for a in client.list_artifacts(run_id, "plots")}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--strategy", "fedmagic"], "unknown strategy 'fedmagic'"),
        (["--dataset", "cifar"], "unknown dataset 'cifar'"),
        (["--model", "resnet"], "unknown model 'resnet'"),
        (["--dataset", "femnist", "--data-dir", "/nonexistent"], "data directory not found"),
        (["--rounds", "0"], "--rounds must be positive"),
        (["--lr", "0"], "--lr must be positive"),
        (["--batch-size", "-1"], "--batch-size must be positive"),
        (["--clients-per-round", "9"], "--clients-per-round 9 exceeds the 4 clients"),
        (["--volume", "0"], r"--volume must be in (0, 1]"),
        (["--volume", "1.2"], r"--volume must be in (0, 1]"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_leaves_no_run(args, message, tracking_uri, capsys):
    code = main(["run", *TINY, "--tracking-uri", tracking_uri, *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("fedlight: error:") and message in err
    runs = _runs(tracking_uri)
    assert len(runs) == 0 or not (runs["status"] == "RUNNING").any()


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--rounds", "abc"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_malformed_yaml_and_data_files(tmp_path, tracking_uri, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: {rounds: [1,\n")
    assert main(["run", "--config", str(bad), "--tracking-uri", tracking_uri]) == 2
    assert "malformed YAML" in capsys.readouterr().err
    (tmp_path / "train.npz").write_bytes(b"garbage")
    assert main(["run", *TINY, "--dataset", "femnist", "--data-dir", str(tmp_path), "--tracking-uri", tracking_uri]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_failure_after_start_ends_the_run_failed(monkeypatch, tracking_uri):
    from fedlight import loop

    def explode(self):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(loop.FederatedLoop, "run", explode)
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(["run", *TINY, "--tracking-uri", tracking_uri])
    runs = _runs(tracking_uri)
    assert list(runs["status"]) == ["FAILED"]
    assert "simulated crash" in runs["tags.error"][0]


def test_subprocess_bad_input_has_no_traceback(tracking_uri):
    proc = subprocess.run(
        [sys.executable, "-m", "fedlight.cli", "run", "--strategy", "nope", "--tracking-uri", tracking_uri],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        "fedlight: error: unknown strategy 'nope'; choose from fedavg, fedprox, scaffold, moon, fedadam, adaptive, oracle, "
        "median, trimmed_mean, krum, multi_krum, bulyan, centered_clipping"
    )


def test_sigterm_ends_the_run_killed_with_one_line(tracking_uri):
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "fedlight.cli", "run", *TINY[:-3], "--rounds", "1000", "--no-progress",
         "--tracking-uri", tracking_uri, "--experiment", "sigterm"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    client = mlflow.MlflowClient(tracking_uri)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        experiment = client.get_experiment_by_name("sigterm")
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        if runs and client.get_metric_history(runs[0].info.run_id, "test_accuracy"):
            break  # training has begun
        time.sleep(0.5)
    proc.terminate()
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143
    assert stderr.strip().splitlines()[-1] == "fedlight: terminated" and "Traceback" not in stderr
    [run] = client.search_runs([client.get_experiment_by_name("sigterm").experiment_id])
    assert run.info.status == "KILLED"
