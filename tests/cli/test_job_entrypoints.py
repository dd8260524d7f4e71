"""The `ray job submit` entrypoints, run with a Python that lacks trainyard's dependencies
(a head started from the venv's `ray` without the venv active): one message, exit code 2."""

import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.parametrize("entrypoint", ["jobs/train.py", "jobs/tune.py", "jobs/pipeline.py"])
def test_a_python_without_the_dependencies_gets_what_to_do(tmp_path, entrypoint):
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True)
    bare = tmp_path / "bare" / "bin" / "python"
    proc = subprocess.run([str(bare), entrypoint, "--config", "jobs/configs/addition.yaml"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    first, *ways = proc.stderr.strip().splitlines()
    assert first.startswith(f"{entrypoint}: this Python ({bare}) lacks torch, ray, optuna")
    assert "source .venv/bin/activate && ray start --head" in ways[0]
    assert '--runtime-env-json \'{"pip": ["torch==2.13.0", "optuna>=4.0"' in ways[1]
    assert "setup_commands" in ways[2]
