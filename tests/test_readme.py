"""The README's Python examples run as they are written."""

import os
import re
import subprocess
import sys

from tests.conftest import REPO


def test_readme_python_examples_run(tmp_path):
    blocks = re.findall(r"```python\n(# README example.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    assert len(blocks) == 2, "the README's two examples (own model on own table, own strategy) are missing"
    script = tmp_path / "example.py"
    script.write_text("\n".join(blocks))
    # mlflow.set_tracking_uri in earlier tests exports MLFLOW_TRACKING_URI; the example uses the default store
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    values = dict(re.findall(r"^(accuracy|median) (\S+)", proc.stdout, flags=re.M))
    assert float(values["accuracy"]) > 0.7 and float(values["median"]) > 0.7, proc.stdout
    assert (tmp_path / "mlruns" / "mlflow.db").is_file()
