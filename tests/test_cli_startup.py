"""The CLI answers --help and refuses bad input without importing torch, Lightning, MLflow or Opacus.

Each case runs in a fresh interpreter (this test process has long imported
torch). Speed itself is measured by hand or by benchmarks, not asserted here:
what is asserted is the cause of slowness, the heavy imports.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "lightning", "mlflow", "opacus", "optuna")

# Runs fedlight.cli.main on argv, then prints its exit status and the heavy modules it imported.
PROBE = """
import json, sys
from fedlight.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "heavy": sorted(m for m in HEAVY if m in sys.modules)}))
""".replace("HEAVY", repr(HEAVY))


def _probe(*args: str, cwd: Path = REPO) -> tuple[int, list[str], str, str]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120, cwd=cwd,
    )
    assert proc.returncode == 0, proc.stderr
    *out, last = proc.stdout.strip().splitlines() or [""]
    result = json.loads(last)
    return result["code"], result["heavy"], "\n".join(out), proc.stderr


def test_importing_the_cli_imports_nothing_heavy():
    proc = subprocess.run(
        [sys.executable, "-c", f"import sys, fedlight.cli; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["sweep", "--help"], ["predict", "--help"]])
def test_help_imports_nothing_heavy(args):
    code, heavy, out, err = _probe(*args)
    assert code == 0 and heavy == [] and err == ""
    assert "usage: fedlight" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--rounds", "0"], "fedlight: error: --rounds must be positive, got 0"),
        (["run", "--strategy", "nope"],
         "fedlight: error: unknown strategy 'nope'; choose from fedavg, fedprox, scaffold, moon, fedadam, adaptive, oracle"),
        (["run", "--dataset", "nope"], "fedlight: error: unknown dataset 'nope'; choose from digits, femnist,"),
        (["run", "--model", "nope"], "fedlight: error: unknown model 'nope'; choose from leaf_cnn, small_cnn,"),
        (["run", "--model", " "], "fedlight: error: model: empty name"),
        (["run", "--output-json", "/no/such/dir/x.json"],
         "fedlight: error: --output-json: directory /no/such/dir does not exist"),
        (["run", "--strategy", "adaptive", "--alpha-rule", "vibes"],
         "fedlight: error: strategy adaptive: unknown alpha rule 'vibes'; choose from uniform,"),
        (["run", "--strategy", "adaptive", "--alpha-rule", "similarity", "--dp-mode", "client", "--dp-noise", "1"],
         "fedlight: error: --alpha-rule similarity scores each party against the round's others"),
        (["run", "--num-clients", "3", "--clients-per-round", "4"], "fedlight: error: --clients-per-round 4 exceeds the 3 clients"),
        (["run", "--partition", "bogus"], "fedlight: error: unknown partition 'bogus'"),
        (["run", "--config", "/no/such/config.yaml"], "fedlight: error: config file not found: /no/such/config.yaml"),
        (["sweep", "--config", "/no/such/sweep.yaml"], "fedlight: error: config file not found: /no/such/sweep.yaml"),
        (["sweep", "--config", "sweeps/digits.yaml", "--n-trials", "0"], "fedlight: error: --n-trials must be positive, got 0"),
        (["register", "--run-id", " ", "--name", "m"], "fedlight: error: --run-id must not be empty"),
        (["export", "--model", "a/b/c", "--out", "/tmp/x"], "fedlight: error: --model must be NAME, NAME@ALIAS or NAME/VERSION"),
        (["export", "--model", "m@champion", "--out", "pyproject.toml"], "fedlight: error: --out pyproject.toml exists and is not a folder"),
        (["predict", "--model", "nothing", "x.png"], "fedlight: error: --model 'nothing' is neither an exported folder nor a model URI"),
        (["predict", "--model", "tests", "x.png"], "fedlight: error: tests is not an exported model folder (needs model.json and model.pt2, model.onnx or model.pt)"),
        (["predict", "--model", "models:/m@champion", "/no/such.png"], "fedlight: error: input not found: /no/such.png"),
        (["run", "--rounds", "abc"], "fedlight run: error: argument --rounds: invalid int value: 'abc'"),
    ],
)
def test_bad_input_is_refused_before_heavy_imports(args, message):
    code, heavy, out, err = _probe(*args)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(message), err
    assert heavy == [], f"imported {heavy} before refusing {args}"


@pytest.mark.parametrize(
    "command, text, message",
    [
        ("run", "training: {rounds: [1,\n", "malformed YAML"),
        ("run", "training: {epochs: 3}\n", "unknown option training.epochs"),
        ("run", "42\n", "the top level must be a mapping"),
        ("sweep", "study: [unclosed\n", "malformed YAML"),
    ],
)
def test_bad_config_file_is_refused_before_heavy_imports(tmp_path, command, text, message):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    code, heavy, _, err = _probe(command, "--config", str(path))
    assert code == 2 and heavy == []
    assert err.count("\n") == 1 and err.startswith("fedlight: error:") and message in err, err


def test_module_entry_point_refuses_bad_input_in_one_line():
    proc = subprocess.run(
        [sys.executable, "-m", "fedlight.cli", "run", "--rounds", "0"], capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert proc.returncode == 2
    assert proc.stderr == "fedlight: error: --rounds must be positive, got 0\n"


def test_the_clis_copies_agree_with_fedlight_export():
    from fedlight import cli, export

    assert cli._EXPORT_FILES == export.FORMAT_FILES and cli._EXPORT_INFO == export.INFO_FILE
    for spec in ["m", "m@champion", "m@a-b_c", "m/3", "my model/12", "m@", "m/", "m/x", "a/b/c", "@x", "m@a@b", "", "m/1@x"]:
        try:
            export._registry_uri(spec)
            accepted = True
        except export.ConfigError:
            accepted = False
        assert bool(cli._REGISTRY_SPEC.fullmatch(spec)) == accepted, spec
