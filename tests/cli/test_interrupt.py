"""Ctrl-C during `trainyard train`: the position is saved first, the way to resume is
printed, the exit code is 130, and the printed command resumes it."""

import re
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT

CONFIG = "jobs/configs/addition.yaml"


@pytest.mark.slow
def test_ctrl_c_saves_the_position_and_prints_how_to_resume(tmp_path):
    overrides = ["data.train_size=4000", "data.val_size=100", "epochs=3", f"checkpoint_dir={tmp_path / 'run'}"]
    proc = subprocess.Popen([sys.executable, "-m", "trainyard.cli.main", "train", CONFIG, *overrides], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:  # the run has begun once the task is announced
        lines.append(line)
        if "training as" in line:
            break
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out = "".join(lines) + proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, out
    assert "Traceback" not in out
    match = re.search(r"interrupted: the position is saved in (\S+)\. Resume with:\n  (trainyard train .*)\n", out)
    assert match, out
    checkpoint, command = match.groups()
    from trainyard.engine import checkpoint as ck

    assert ck.verify(ck.Path(checkpoint)) and "_b0000000" not in checkpoint  # mid-epoch: the very position
    resumed = subprocess.run([sys.executable, "-m", "trainyard.cli.main", *command.split()[1:]], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {checkpoint}" in resumed.stderr
