"""One run writes in a run folder at a time: two runs started at once into one folder no
longer both train and save over each other (each printed the same checkpoint, holding the
first run's weights)."""

import json
import os
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from trainyard import Trainer, TrainingConfig
from trainyard.engine import run_folder
from trainyard.engine.run_folder import CLAIM, RunFolderInUse

from tests.conftest import ROOT
from tests.helpers import VOCAB, lm_factory, lm_samples

CONFIG = SimpleNamespace(vocab_size=VOCAB)

TRAIN = [sys.executable, "-m", "trainyard.cli.main", "train", "jobs/configs/addition.yaml", "data.train_size=2000", "data.val_size=50",
         "model.d_model=32", "model.n_layers=1"]


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid  # ended and reaped: no process has it (pids are not reused at once)


def _plant(run_dir, host, pid, age_s=0.0):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CLAIM).write_text(json.dumps({"host": host, "pid": pid, "since": time.time() - age_s}))
    os.utime(run_dir / CLAIM, (time.time() - age_s,) * 2)


@pytest.mark.slow  # two trainyard commands in their own processes
def test_two_commands_into_one_folder_one_trains_and_the_other_is_told_at_once(tmp_path):
    folder = tmp_path / "ck"
    # The first trains for ~10 s (0.4 s an epoch), longer than the second takes to start
    # (~3 s of imports) on a machine of any speed: the two overlap as in the report.
    first = subprocess.Popen([*TRAIN, "epochs=24", "learning_rate=0.001", f"checkpoint_dir={folder}"], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (folder / CLAIM).exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    second = subprocess.run([*TRAIN, "epochs=24", "learning_rate=0.005", f"checkpoint_dir={folder}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    out = first.communicate(timeout=300)[0]
    assert first.returncode == 0, out
    assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr
    assert f"{folder} is being written by another run right now (process {first.pid} on " in second.stderr
    assert "start a new run with --fresh" in second.stderr and "resume_from" not in second.stderr  # the command's own terms
    (checkpoint,) = sorted(folder.glob("checkpoint_e0024_*"))
    assert json.loads((checkpoint / "trainer_state.json").read_text())["training_config"]["learning_rate"] == 0.001  # the first run's
    assert not (folder / CLAIM).exists()  # released when the run ended


def test_a_claim_is_released_however_the_run_ends_and_a_used_folder_is_still_refused(tmp_path):
    folder = tmp_path / "run"
    Trainer(lm_factory(), CONFIG, TrainingConfig(epochs=1, checkpoint_dir=str(folder))).train(lm_samples())
    assert not (folder / CLAIM).exists()
    with pytest.raises(RunFolderInUse, match="already holds checkpoints of an earlier run; pass resume_from="):
        Trainer(lm_factory(), CONFIG, TrainingConfig(epochs=1, checkpoint_dir=str(folder))).train(lm_samples())
    assert not (folder / CLAIM).exists()  # the refused run let go of it too
    resumed = Trainer(lm_factory(), CONFIG, TrainingConfig(epochs=2, checkpoint_dir=str(folder))).train(lm_samples(), resume_from=str(folder))
    assert resumed["checkpoint_path"].startswith(str(folder)) and not (folder / CLAIM).exists()


def test_a_dead_runs_claim_is_taken_over_and_a_live_ones_is_not(tmp_path):
    here = socket.gethostname()
    _plant(tmp_path / "dead", here, _dead_pid())
    run_folder.claim(tmp_path / "dead")  # killed on this machine: its process is gone
    assert json.loads((tmp_path / "dead" / CLAIM).read_text())["pid"] == os.getpid()
    run_folder.release(tmp_path / "dead")
    assert not (tmp_path / "dead" / CLAIM).exists()

    _plant(tmp_path / "live", here, os.getppid())  # a process that runs
    with pytest.raises(RunFolderInUse, match=f"process {os.getppid()} on {here}.*delete .*{CLAIM}"):
        run_folder.claim(tmp_path / "live")
    run_folder.release(tmp_path / "live")  # not ours: kept
    assert json.loads((tmp_path / "live" / CLAIM).read_text())["pid"] == os.getppid()


def test_a_claim_from_another_machine_counts_while_its_holder_touches_it(tmp_path):
    _plant(tmp_path / "fresh", "node-7", 1234, age_s=5)
    with pytest.raises(RunFolderInUse, match="process 1234 on node-7"):
        run_folder.claim(tmp_path / "fresh")
    _plant(tmp_path / "stale", "node-7", 1234, age_s=run_folder.CLAIM_STALE_S + 60)  # its run died with its node
    run_folder.claim(tmp_path / "stale")
    run_folder.release(tmp_path / "stale")


def test_the_holder_keeps_its_claim_fresh(tmp_path, monkeypatch):
    monkeypatch.setattr(run_folder, "CLAIM_REFRESH_S", 0.05)
    run_folder.claim(tmp_path)
    os.utime(tmp_path / CLAIM, (time.time() - 1000,) * 2)
    deadline = time.time() + 10
    while time.time() - (tmp_path / CLAIM).stat().st_mtime > 100 and time.time() < deadline:
        time.sleep(0.05)
    assert time.time() - (tmp_path / CLAIM).stat().st_mtime < 100  # touched again by the holder
    run_folder.release(tmp_path)


def test_a_claim_being_written_this_instant_is_not_taken_for_a_dead_one(tmp_path):
    (tmp_path / CLAIM).write_text("")  # created with O_EXCL, its holder about to write who it is
    with pytest.raises(RunFolderInUse, match="is being claimed by another run starting this instant") as refused:
        run_folder.claim(tmp_path)
    assert "process ?" not in str(refused.value)  # no holder to name yet: it says so, not "process ? on ?"
    os.utime(tmp_path / CLAIM, (time.time() - 60,) * 2)  # empty for a minute: its claimant died mid-write
    run_folder.claim(tmp_path)
    run_folder.release(tmp_path)
