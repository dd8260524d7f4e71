"""Enabling the legacy paths without a code change: TRAINYARD_LEGACY_IMPORTS, python -m trainyard.compat."""

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

OLD_SCRIPT = "from utils.training import TrainingConfig\nimport sys\nprint(TrainingConfig().epochs, sys.argv[1:])\n"


def test_python_m_trainyard_compat_runs_an_unchanged_script(tmp_path):
    (tmp_path / "old.py").write_text(OLD_SCRIPT)
    out = subprocess.run([sys.executable, "-m", "trainyard.compat", "old.py", "x"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "3 ['x']"
    plain = subprocess.run([sys.executable, "old.py"], cwd=tmp_path, capture_output=True, text=True)
    assert "No module named 'utils'" in plain.stderr


@pytest.mark.slow
def test_the_installed_pth_enables_legacy_imports_only_when_the_variable_is_set(tmp_path):
    """Installs the package (no dependencies) the way pip installs it for users, into a
    target directory, and starts Python with that directory as a site directory."""
    pytest.importorskip("setuptools")  # the build backend, used without isolation (no download)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(target), str(ROOT)],
                   check=True, capture_output=True)
    assert (target / "trainyard_legacy_imports.pth").is_file()
    (tmp_path / "old.py").write_text(f"import site; site.addsitedir({str(target)!r})\n" + OLD_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("TRAINYARD_LEGACY_IMPORTS", "PYTHONPATH")}
    off = subprocess.run([sys.executable, "old.py"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert "No module named 'utils'" in off.stderr
    on = subprocess.run([sys.executable, "old.py"], cwd=tmp_path, capture_output=True, text=True, env={**env, "TRAINYARD_LEGACY_IMPORTS": "1"})
    assert on.returncode == 0, on.stderr
    assert on.stdout.strip() == "3 []"
