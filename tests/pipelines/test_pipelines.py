"""The pipelines' --quick modes run end to end on the real FEMNIST subset."""

import csv
import json
import subprocess
import sys

import mlflow
import pytest

from tests.conftest import FEMNIST_DIR, REPO, requires_femnist


def _run(script, tmp_path, *extra):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = subprocess.run(
        [sys.executable, str(REPO / "pipelines" / script), "--quick", "--data-dir", str(FEMNIST_DIR),
         "--out", str(tmp_path / "out"), "--tracking-uri", uri, *extra],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return uri, proc.stdout


@requires_femnist
def test_noisy_parties_quick(tmp_path):
    uri, stdout = _run("noisy_parties.py", tmp_path)
    table = (tmp_path / "out" / "table.md").read_text()
    assert "oracle (corrupted parties weight 0)" in table and "gap closed" in table
    rows = list(csv.DictReader((tmp_path / "out" / "table.csv").open()))
    assert {(r["strategy"], r["mode"]) for r in rows} == {(s, m) for s in ("fedavg", "adaptive", "oracle") for m in ("clean", "random", "shift")}
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["noisy-parties"])
    summary = runs[runs["tags.pipeline_summary"] == "yes"]
    trained = runs[runs["tags.pipeline_summary"] != "yes"]
    assert len(summary) == 1 and len(trained) == 8 and set(runs["status"]) == {"FINISHED"}
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(summary["run_id"].iloc[0])}
    assert artifacts == {"table.md", "table.csv"}
    # a second invocation reuses the finished runs instead of training again
    _, again = _run("noisy_parties.py", tmp_path)
    assert "8 of 8 runs already done" in again


@requires_femnist
def test_table_quick(tmp_path):
    _run("table.py", tmp_path, "--strategies", "fedavg", "scaffold", "--conditions", "clean")
    rows = list(csv.DictReader((tmp_path / "out" / "table.csv").open()))
    assert [r["strategy"] for r in rows] == ["fedavg", "scaffold"]
    assert all(0 <= float(r["recall_mean"]) <= 1 for r in rows)


HEAVY = ("torch", "lightning", "mlflow", "opacus")
# Runs a pipeline script as `python pipelines/NAME.py ARGS` would, then prints its exit status and the heavy modules
# it imported (a fresh interpreter: this test process has long imported torch).
PROBE = """
import json, runpy, sys
from pathlib import Path
sys.argv = sys.argv[1:]
sys.path.insert(0, str(Path(sys.argv[0]).parent))
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
    code = 0
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "heavy": sorted(m for m in HEAVY if m in sys.modules)}))
""".replace("HEAVY", repr(HEAVY))
PIPELINES = ("bench", "byzantine", "convergence", "crossdomain", "heart_disease", "noisy_parties", "privacy", "scale",
             "table", "volume")


@pytest.mark.parametrize("name", PIPELINES)
def test_pipeline_bad_data_dir_is_one_line_before_importing_torch(name, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(REPO / "pipelines" / f"{name}.py"), "--quick", "--data-dir", str(tmp_path / "none")],
        capture_output=True, text=True, timeout=120,
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["code"] == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("pipeline: error: data directory not found") and len(proc.stderr.strip().splitlines()) == 1
    assert result["heavy"] == []  # what made a typo cost 5 s: torch and Lightning imported before the check


def test_pipeline_bad_setting_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "noisy_parties.py"), "--quick", "--data-dir", str(tmp_path),
         "--momentum", "1.5", "--out", str(out), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "pipeline: error: --momentum must be in [0, 1), got 1.5"
    assert not out.exists() and not (tmp_path / "mlflow.db").exists()




@requires_femnist
def test_privacy_quick(tmp_path):
    _run("privacy.py", tmp_path, "--noise", "1.0")
    rows = list(csv.DictReader((tmp_path / "out" / "table.csv").open()))
    assert [r["noise"] for r in rows] == ["none", "1.0"]
    assert float(rows[1]["epsilon_max"]) > 0 and rows[0]["epsilon_max"] == "inf"


@requires_femnist
def test_volume_quick(tmp_path):
    _run("volume.py", tmp_path, "--strategies", "fedavg")
    rows = list(csv.DictReader((tmp_path / "out" / "table.csv").open()))
    assert len(rows) == 6 and (tmp_path / "out" / "volume.png").stat().st_size > 10_000


@requires_femnist
def test_convergence_quick(tmp_path):
    _run("convergence.py", tmp_path, "--strategies", "fedavg", "fedprox", "--runs", str(tmp_path / "runs.jsonl"))
    assert (tmp_path / "out" / "convergence.png").stat().st_size > 10_000


@requires_femnist
def test_crossdomain_quick(tmp_path):
    _run("crossdomain.py", tmp_path)
    rows = list(csv.DictReader((tmp_path / "out" / "table.csv").open()))
    assert [r["setup"] for r in rows] == ["femnist parties alone", "digits parties alone", "fedavg, all parties", "adaptive, all parties"]
    assert all(0 <= float(r["accuracy_digits_mean"]) <= 1 for r in rows)


HEART_DIR = REPO.parent / "shared" / "data" / "heart_disease"


@pytest.mark.skipif(not (HEART_DIR / "raw").is_dir(), reason=f"UCI Heart Disease data not found at {HEART_DIR}")
def test_heart_disease_quick(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "heart_disease.py"), "--quick", "--strategies", "fedavg", "adaptive",
         "--out", str(tmp_path / "out"), "--tracking-uri", uri],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {r["method"]: r for r in csv.DictReader((tmp_path / "out" / "table.csv").open())}
    assert set(rows) == {"pooled", "local cleveland", "local hungarian", "local switzerland", "local va", "fedavg", "adaptive"}
    for row in rows.values():
        hospitals = [float(row[f"accuracy_{h}"]) for h in ("cleveland", "hungarian", "switzerland", "va")]
        assert float(row["mean_of_hospitals"]) == pytest.approx(sum(hospitals) / 4, abs=1e-9)
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| fedavg |" in table and "0.6850" in table and "trust weight alpha" in table
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["heart-disease"])
    assert len(runs) == 2 + 5 + 1 and set(runs["status"]) == {"FINISHED"}
