"""The README's "a Ray head on this machine" commands, run verbatim against a real head.

Marked `cluster` and run in a pytest session of its own (`make test` runs it after the main
suite): its last command, `ray stop`, stops every Ray instance on the machine, including a
test session's own.
"""

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.cluster


def readme_block(after: str) -> str:
    """The first ```bash block after the line starting with `after`."""
    text = (ROOT / "README.md").read_text()
    start = text.index(after)
    return re.search(r"```bash\n(.*?)```", text[start:], re.S).group(1)


def test_the_readme_head_and_job_commands_work_as_written():
    block = readme_block("A Ray head on this machine")
    assert "ray start --head" in block and "ray job submit" in block and block.rstrip().endswith("ray stop")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "VIRTUAL_ENV"}
    env["PATH"] = ":".join(p for p in env["PATH"].split(":") if ".venv" not in p)  # as a fresh shell has it
    proc = subprocess.run(["bash", "-e", "-c", block], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert re.search(r"Job 'raysubmit_\w+' succeeded", out), out[-3000:]
    match = re.search(r"final_loss [\d.]+; checkpoint (\S+)", out)
    assert match, out[-3000:]
    checkpoint = Path(match.group(1))
    durable = Path("~/trainyard-runs").expanduser()
    assert checkpoint.is_relative_to(durable) and checkpoint.is_dir()  # not inside Ray's temporary copy of the upload
    for noise in ("Traceback", "PlacementGroupCleaner", "PreemptionWatcher", "AuthenticationError"):
        assert noise not in out, out[-5000:]
    import shutil

    shutil.rmtree(checkpoint.parent)
