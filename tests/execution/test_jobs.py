"""`ray job submit --working-dir .` against a real local head, as on a cluster.

The head runs from a bare environment that has torch and Ray but not trainyard, so the
job proves the source is shipped to every worker from the working dir (tests/ray_heads.py
starts and stops it).
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.ray_heads import start_head

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
TINY = ["data.train_size=64", "data.val_size=16", "model.d_model=16", "model.n_heads=2", "model.n_layers=1", "batch_size=16", "epochs=2"]


@pytest.fixture(scope="module")
def bare_head(tmp_path_factory):
    pytest.importorskip("ray.dashboard")
    tmp = tmp_path_factory.mktemp("head")
    venv = tmp / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    # A plain path entry: the main environment's packages, without its .pth hooks, so the
    # editable install of trainyard is not visible here.
    main_site = next(p for p in sys.path if p.endswith("site-packages") and Path(p, "ray").is_dir())
    (site / "main.pth").write_text(main_site + "\n")
    python = str(venv / "bin" / "python")
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "token"}
    env.pop("PYTHONPATH", None)
    env.pop("RAY_ADDRESS", None)
    check = subprocess.run([python, "-c", "import trainyard"], env=env, capture_output=True)
    assert check.returncode != 0, "the bare environment must not see trainyard"
    head = start_head(env, num_cpus=3, python=python, timeout=60, own_temp_dir=False)  # "the `ray start` head on this machine"
    yield python, {**env, "RAY_ADDRESS": head.address}
    head.stop()


def submit(python, env, *entrypoint, timeout=300):
    cmd = [python, "-m", "ray.scripts.scripts", "job", "submit", "--working-dir", ".", "--", *entrypoint]
    for _ in range(20):  # the head's job agent comes up a few seconds after its dashboard
        job = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        if "No available agent to submit job" not in job.stderr:
            return job
        time.sleep(2)
    return job


def test_the_working_dir_does_not_shadow_the_stdlib(bare_head):
    python, env = bare_head
    job = submit(python, env, "python", "-c", "import platform; print('stdlib platform', platform.python_version())")
    assert job.returncode == 0, job.stdout + job.stderr
    assert "stdlib platform 3." in job.stdout


def test_jobs_train_runs_on_a_cluster_without_trainyard_installed(bare_head, tmp_path):
    python, env = bare_head
    job = submit(python, env, "python", "jobs/train.py", "--config", "jobs/configs/addition.yaml", *TINY,
                 "--workers", "2", "--storage-path", str(tmp_path / "storage"))
    logs = job.stdout + job.stderr
    assert job.returncode == 0 and "succeeded" in logs, logs
    assert "[trainyard] epoch 2/2" in logs and "final_loss" in logs
    # named after the command (a resubmission of it resumes the run)
    assert list((tmp_path / "storage").glob("addition-*/checkpoint_e0002_*/COMPLETE"))


def test_jobs_pipeline_runs_the_main_job_on_the_cluster(bare_head, tmp_path):
    """jobs/pipeline.py (and jobs/tune.py, which shares its entry code): the sweep's trials,
    the final training's workers, the export and the report, all on a cluster where
    trainyard is not installed."""
    python, env = bare_head
    job = submit(python, env, "python", "jobs/pipeline.py", "jobs/configs/addition.yaml", "--space", "tune_spaces/addition_small.yaml",
                 *TINY, "data.digits=2", "final.epochs=2", "--samples", "2", "--workers", "2", "--output-dir", str(tmp_path), "--name", "job-run")
    logs = job.stdout + job.stderr
    assert job.returncode == 0 and "succeeded" in logs, logs
    assert "sweep done" in logs and "[trainyard] epoch 2/2" in logs and "pt2 max|err|" in logs
    run = tmp_path / "job-run"
    assert (run / "sweep" / "best_config.yaml").exists() and (run / "export" / "model.pt2").exists()
    assert (run / "report" / "report.html").exists() and (run / "lineage.json").exists()


def test_a_command_that_would_join_a_head_without_trainyard_says_so_in_one_line(bare_head, tmp_path):
    """With another `ray start` head on the machine, `trainyard train --workers 2` joined it
    and ended in a 40-line traceback ('No module named trainyard'). It says which cluster and
    why, refuses before any work, and RAY_ADDRESS=local runs on a Ray of its own."""
    from trainyard.execution.ray_env import running_cluster

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # the bare head is this machine's `ray start` head
    deadline = time.time() + 60
    while running_cluster() is None and time.time() < deadline:  # `ray start` names its head a moment after it answers
        time.sleep(0.5)
    argv = [sys.executable, "-m", "trainyard.cli.main", "train", "jobs/configs/addition.yaml", *TINY, "--workers", "2",
            "--storage-path", str(tmp_path / "runs")]
    joined = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert joined.returncode == 2 and "Traceback" not in joined.stderr, joined.stderr[-3000:]
    assert "(a `ray start` head on this machine; RAY_ADDRESS=local runs a Ray of this process's own instead)" in joined.stderr
    (error,) = [line for line in joined.stderr.splitlines() if line.startswith("trainyard: error:")]
    assert "cannot import trainyard: its Python (" in error and "RAY_ADDRESS=local" in error
    assert not list((tmp_path / "runs").rglob("checkpoint_*"))  # nothing trained
    local = subprocess.run(argv, cwd=ROOT, env={**env, "RAY_ADDRESS": "local"}, capture_output=True, text=True, timeout=300)
    assert local.returncode == 0 and "joining" not in local.stderr, local.stderr[-3000:]
