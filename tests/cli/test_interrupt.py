"""Ctrl-C during `trainyard train`: the position is saved first, the way to resume is
printed, the exit code is 130, and the printed command resumes it."""

import os
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
    assert command == " ".join(["trainyard", "train", CONFIG, *overrides])  # the same command: running it again resumes
    from trainyard.engine import checkpoint as ck

    assert ck.verify(ck.Path(checkpoint)) and "_b0000000" not in checkpoint  # mid-epoch: the very position
    resumed = subprocess.run([sys.executable, "-m", "trainyard.cli.main", *command.split()[1:]], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {checkpoint}" in resumed.stderr


def _stop_once(argv, signum, after: str, env=None, group=False):
    """Start `trainyard ...`, send `signum` once a line holds `after` (to its whole process
    group with `group`, as a terminal's Ctrl-C does); (exit code, output)."""
    proc = subprocess.Popen([sys.executable, "-m", "trainyard.cli.main", *argv], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=group)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if after in line:
            break
    if group:
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    return proc.wait(timeout=180), "".join(lines) + proc.stdout.read()


@pytest.mark.slow
def test_sigterm_in_this_process_saves_the_position_like_ctrl_c(tmp_path):
    """SIGTERM is what a scheduler or a preempted VM sends."""
    overrides = ["data.train_size=4000", "data.val_size=100", "epochs=3", f"checkpoint_dir={tmp_path / 'run'}"]
    code, out = _stop_once(["train", CONFIG, *overrides], signal.SIGTERM, "training as")
    assert code == 143 and "Traceback" not in out, out
    match = re.search(r"stopped \(SIGTERM\): the position is saved in (\S+)\. Resume with:\n  trainyard train .*\n", out)
    assert match, out
    from trainyard.engine import checkpoint as ck

    ck.verify(ck.Path(match.group(1)))


@pytest.mark.slow
def test_a_stopped_ray_run_says_how_to_resume_and_the_command_does(tmp_path):
    """SIGTERM to the command (it exited -6 with Ray's C++ 'SIGTERM received' dump and no word
    of resuming), then Ctrl-C to the resumed command's process group, as a terminal sends it
    (Ray Train's own handler aborted the run and exited 1, silent): each says how to resume,
    and the command it prints resumes from the newest checkpoint kept. Each command starts its
    own local Ray, as `trainyard train --workers 2` does on one machine."""
    # Epochs of a fraction of a second, and enough of them that the stop lands mid-run however
    # long the signal takes to reach the workers.
    tiny = ["data.train_size=2000", "data.val_size=50", "epochs=30", "model.d_model=32", "model.n_layers=1"]
    argv = ["train", CONFIG, *tiny, "--workers", "2", "--storage-path", str(tmp_path / "runs")]
    kept: set[str] = set()
    for signum, group, said in ((signal.SIGTERM, False, r"stopped \(SIGTERM\)"), (signal.SIGINT, True, "interrupted")):
        code, out = _stop_once(argv, signum, "/30 | train/loss", group=group)  # once an epoch has ended
        assert code == 128 + signum and "Traceback" not in out and "SIGTERM received" not in out, out
        if kept:  # the resumed command: from the newest checkpoint the stopped one kept
            assert re.findall(r"resumed from (\S+)", out) == [max(kept)], out
        match = re.search(rf"trainyard: {said}: run (\S+) keeps its checkpoints; resume it with: (trainyard train .*)\n", out)
        assert match, out
        name, command = match.groups()
        left = {str(p) for p in (tmp_path / "runs" / name).glob("checkpoint_e*")}
        assert left - kept and not any("checkpoint_e0030" in p for p in left), out  # an epoch had ended, the last had not
        kept, argv = left, command.split()[1:]
    resumed = subprocess.run([sys.executable, "-m", "trainyard.cli.main", *argv], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    lines = re.findall(r"resumed from (\S+)", resumed.stderr)
    # One line, not one per rank; from the newest checkpoint the stopped run kept, whether or
    # not Ray Train had registered it before the stop (it resumed epochs earlier).
    assert lines == [max(kept)], f"kept {sorted(kept)}; the rerun said:\n{resumed.stderr[-6000:]}"  # whole, not a truncated repr
