"""byzantine: the grid of attacks x strategies, the f each robust rule is told, the summary's targets, --quick."""

import csv
import subprocess
import sys

import byzantine
import mlflow

from tests.conftest import FEMNIST_DIR, REPO, requires_femnist


def _args(*argv):
    return byzantine.build_parser().parse_args(["--seeds", "0", *argv])


def test_robust_f_is_the_expected_attackers_and_bulyan_fits_4f_plus_3():
    assert byzantine.robust_f("median", 0.2, 10) == 2 and byzantine.robust_f("krum", 0.3, 10) == 3
    assert byzantine.robust_f("bulyan", 0.2, 10) == 1 and byzantine.robust_f("bulyan", 0.2, 4) == 0
    assert byzantine.robust_f("trimmed_mean", 0.1, 10) == 1


def test_the_grid_covers_every_attack_and_strategy_once():
    jobs = byzantine.build_jobs(_args())
    keys = {(dict(j.labels)["attack"], dict(j.labels)["strategy"]) for j in jobs}
    # every attack x strategy, but no oracle without attack (it is FedAvg there)
    assert len(jobs) == len(keys) == len(byzantine.ATTACKS) * len(byzantine.STRATEGIES) - 1
    ipm2 = next(j for j in jobs if dict(j.labels)["attack"] == "ipm_2")
    assert ipm2.sections["faults"] == {"attack": "ipm", "byzantine_fraction": 0.2, "ipm_epsilon": 2.0}
    bulyan = next(j for j in jobs if dict(j.labels)["strategy"] == "bulyan")
    assert bulyan.sections["strategy"] == {"name": "bulyan", "byzantine_f": 1}
    clean = next(j for j in jobs if dict(j.labels)["attack"] == "none")
    assert clean.sections["faults"] == {} and clean.sections["training"]["momentum"] == 0.5
    similarity = next(j for j in jobs if dict(j.labels)["strategy"] == "adaptive_similarity")
    assert similarity.sections["strategy"] == {"name": "adaptive", "alpha_rule": "similarity"}
    # two fractions: the clean runs whose f does not change are shared (fedavg, the three adaptive rules; bulyan's f is 1 for both)
    two = byzantine.build_jobs(_args("--fractions", "0.1", "0.3"))
    assert len(two) == 2 * len(jobs) - 5


def test_summary_reports_best_rules_against_the_targets():
    args = _args("--attacks", "none", "sign_flip", "alie", "--strategies", "fedavg", "median", "oracle")
    accuracy = {("fedavg", "none"): 0.80, ("median", "none"): 0.79, ("fedavg", "sign_flip"): 0.30,
                ("median", "sign_flip"): 0.78, ("oracle", "sign_flip"): 0.80, ("fedavg", "alie"): 0.70,
                ("median", "alie"): 0.70, ("oracle", "alie"): 0.80}
    results = {}
    for job in byzantine.build_jobs(args):
        labels = dict(job.labels)
        acc = accuracy[(labels["strategy"], labels["attack"])]
        history = [{"round": r, "test_accuracy": acc} for r in range(1, 13)]
        results[job.key] = {"labels": labels, "history": history, "final": {"accuracy": acc}}
    text, rows = byzantine.summarise(results, args)
    assert "| median | 79.00 ± 0.00 | 78.00 ± 0.00 | 70.00 ± 0.00 |" in text
    # no attack: the worst rule is 1 point below FedAvg (met); sign flip -2 (met, target 3); ALIE -10 (missed by 5)
    assert "| best − clean fedavg (points; target) | -1.00 (met: ≥ −2) | -2.00 (met: ≥ −3) | -10.00 (missed by 5.00: ≥ −5) |" in text
    assert {r["measure"] for r in rows} == {"final", "mean_last_10"}
    assert {(r["strategy"], r["attack"]) for r in rows if r["measure"] == "final"} >= {("oracle", "none"), ("median", "alie")}


@requires_femnist
def test_byzantine_quick(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "byzantine.py"), "--quick", "--data-dir", str(FEMNIST_DIR),
         "--out", str(tmp_path / "out"), "--tracking-uri", uri, "--attacks", "sign_flip",
         "--strategies", "median", "oracle"],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader((tmp_path / "out" / "table.csv").open()))
    assert {(r["strategy"], r["attack"]) for r in rows if r["measure"] == "final"} == {
        (s, a) for s in ("fedavg", "median", "oracle") for a in ("none", "sign_flip")}
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["byzantine"])
    trained = runs[runs["tags.pipeline_summary"] != "yes"]
    assert len(trained) == 5 and set(runs["status"]) == {"FINISHED"}
    attacked = trained[trained["params.faults.attack"] == "sign_flip"]
    assert len(attacked) == 3
    files = {a.path for a in mlflow.MlflowClient().list_artifacts(attacked["run_id"].iloc[0], "faults")}
    assert "faults/byzantine.json" in files
