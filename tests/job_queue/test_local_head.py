"""On one machine with no cluster running, the queue starts a `ray start` head the first time
it needs one, says so with the command that stops it, and uses it from then on."""

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.ray_heads import head_env

pytestmark = pytest.mark.slow
CONFIG = str(ROOT / "jobs" / "configs" / "addition.yaml")
TINY = ["data.train_size=64", "data.val_size=16", "model.n_layers=1", "model.d_model=16", "epochs=1"]
WAIT = "import sys; from trainyard.job_queue import JobQueue; print(JobQueue(sys.argv[1]).wait(sys.argv[2], timeout=180))"


def _kill_ray_under(folder: Path) -> None:
    """Stop the Ray this test started, by its processes (their command lines name its temp
    dir): `ray stop` would stop every Ray on the machine."""
    for _ in range(3):
        mine = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit() and int(proc.name) != os.getpid():
                try:
                    if str(folder) in (proc / "cmdline").read_bytes().decode(errors="replace"):
                        mine.append(int(proc.name))
                except OSError:
                    pass
        for pid in mine:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if not mine:
            return
        time.sleep(1)


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="the head's processes are found through /proc")
def test_with_no_cluster_running_the_queue_starts_a_head_and_says_how_to_stop_it(tmp_path):
    ray_tmp = Path(tempfile.mkdtemp(prefix="ty-", dir="/tmp"))  # where `ray start` keeps its session and address file
    env = head_env(RAY_TMPDIR=str(ray_tmp))
    env.pop("RAY_ADDRESS", None)
    db = f"sqlite:///{tmp_path}/jobs.db"
    try:
        first = subprocess.run([sys.executable, "-m", "trainyard.cli.main", "jobs", "submit", CONFIG, *TINY, "--db", db],
                               cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert first.returncode == 0, first.stdout + first.stderr[-3000:]
        said = [line for line in first.stderr.splitlines() if "started a Ray head on this machine" in line]
        assert len(said) == 1 and "`ray stop` stops it" in said[0], first.stderr[-3000:]
        job_id = first.stdout.split()[1]
        assert (ray_tmp / "ray" / "ray_current_cluster").is_file()
        done = subprocess.run([sys.executable, "-c", WAIT, db, job_id], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.stdout.strip() == "completed", done.stdout + done.stderr[-3000:]
        # the next submission finds that head: nothing started, nothing said
        again = subprocess.run([sys.executable, "-m", "trainyard.cli.main", "jobs", "submit", CONFIG, *TINY, "--db", db, "--wait"],
                               cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0 and "started a Ray head" not in again.stderr, again.stdout + again.stderr[-3000:]
    finally:
        _kill_ray_under(ray_tmp)
        subprocess.run(["rm", "-rf", str(ray_tmp)], check=False)
