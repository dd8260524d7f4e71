"""`trainyard jobs ...` on SQLite and on a real PostgreSQL server: a job submitted from the
shell runs, and any other process reads, follows, cancels and resumes it by its id."""

import json
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow
CONFIG = str(ROOT / "jobs" / "configs" / "addition.yaml")
TINY = ["data.train_size=256", "data.val_size=16", "model.n_layers=1", "model.d_model=32", "epochs=2"]


def jobs(db, *argv, **kwargs):
    """`trainyard jobs ...` in a process of its own, as another shell would run it."""
    env = {k: v for k, v in os.environ.items() if k != "TRAINYARD_JOBS_DB"}
    return subprocess.run([sys.executable, "-m", "trainyard.cli.main", "jobs", *argv, "--db", db], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, **kwargs)


def test_a_job_submitted_from_the_shell_is_read_from_another_process(queue_cluster, jobs_db, tmp_path, monkeypatch, capsys):
    from trainyard.cli.main import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRAINYARD_JOBS_DB", jobs_db)  # what --db defaults to
    assert main(["jobs", "submit", CONFIG, *TINY, "--name", "tiny", "--wait"]) == 0
    out = capsys.readouterr().out.splitlines()
    job_id = out[0].split()[1]
    assert out[0].startswith(f"job {job_id} submitted to ") and out[-1] == f"job {job_id}: completed"
    assert any("epoch 2/2 | train/loss" in line for line in out[1:-1])  # followed: the job's lines, then its state

    listed = jobs(jobs_db, "list")
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split() == ["ID", "NAME", "OWNER", "STATE", "PRIORITY", "QUEUED", "SUBMITTED", "ATTEMPTS", "WHY"]
    assert row.split()[:5] == [job_id, "tiny", __import__("getpass").getuser(), "completed", "0"]
    assert jobs(jobs_db, "list", "--owner", "someone-else").stdout.startswith("no jobs of someone-else in ")
    status = dict(line.split(None, 1) for line in jobs(jobs_db, "status", job_id).stdout.splitlines())
    assert status["state"] == "completed" and status["attempts"] == "1" and status["checkpoint"].startswith(status["checkpoint_dir"])
    assert status["ray_job"] == f"trainyard-{job_id}-1"
    logs = jobs(jobs_db, "logs", job_id).stdout  # what `ray job logs trainyard-<id>-1` prints, less Ray's own lines
    assert f"job {job_id}: attempt 1 started on" in logs and "epoch 2/2 | train/loss" in logs and f"job {job_id}: completed" in logs
    assert "job_manager.py" not in logs and "Running entrypoint" not in logs
    ray_logs = subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "job", "logs", f"trainyard-{job_id}-1", "--address", queue_cluster.address],
                              capture_output=True, text=True, timeout=120)
    assert "epoch 2/2 | train/loss" in ray_logs.stdout, ray_logs.stdout + ray_logs.stderr
    results = json.loads(jobs(jobs_db, "results", job_id).stdout)
    assert results["checkpoint_path"] == status["checkpoint"] and len(results["metrics_summary"]) == 2
    assert f"final_loss {results['final_loss']:.4f}" in logs

    cancel = jobs(jobs_db, "cancel", job_id)
    assert cancel.returncode == 1 and cancel.stdout.strip() == f"job {job_id} is completed: nothing to cancel"
    unknown = jobs(jobs_db, "status", "nope")
    assert unknown.returncode == 2 and unknown.stderr.startswith("trainyard: error: no job 'nope' in ")
    assert "`trainyard jobs list` lists the jobs there" in unknown.stderr and "Traceback" not in unknown.stderr


@pytest.mark.parametrize("jobs_db", ["postgresql"], indirect=True)
def test_a_running_job_is_cancelled_from_another_shell_and_resumed_to_completion(jobs_db, tmp_path, queue_cluster):
    """The submitting shell follows the job (--wait); a second one cancels it (it saves its
    position first), and `resume --wait` runs it to the end from there, both on the cluster
    in RAY_ADDRESS. (On PostgreSQL; cancel and resume on SQLite are
    tests/job_queue/test_queue.py's, through the API the CLI calls.)"""
    env = {k: v for k, v in os.environ.items() if k != "TRAINYARD_JOBS_DB"}
    submit = subprocess.Popen([sys.executable, "-m", "trainyard.cli.main", "jobs", "submit", CONFIG, *TINY[:-1], "data.train_size=8000",
                               "--db", jobs_db, "--wait"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    job_id = submit.stdout.readline().split()[1]
    from trainyard.job_queue import JobQueue

    queue, deadline = JobQueue(jobs_db), time.monotonic() + 120
    while time.monotonic() < deadline and queue.get_job_status(job_id) != "running":
        time.sleep(0.2)
    time.sleep(1)  # some steps in
    cancel = jobs(jobs_db, "cancel", job_id)
    assert cancel.returncode == 0 and cancel.stdout.startswith(f"job {job_id} cancelled"), cancel.stdout + cancel.stderr
    out, err = submit.communicate(timeout=120)
    assert submit.returncode == 1 and out.strip().endswith(f"job {job_id}: cancelled"), out + err[-2000:]
    logs = jobs(jobs_db, "logs", job_id).stdout
    assert f"job {job_id}: cancelled; its checkpoint" in logs
    stopped = dict(line.split(None, 1) for line in jobs(jobs_db, "status", job_id).stdout.splitlines())
    assert stopped["state"] == "cancelled" and stopped["checkpoint"].endswith(" (resume continues from it)"), stopped
    where = stopped["checkpoint"].split()[0]
    resumed = subprocess.run([sys.executable, "-m", "trainyard.cli.main", "jobs", "resume", job_id, "--db", jobs_db, "--wait"], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)  # as a terminal shows them
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    lines = resumed.stdout.strip().splitlines()
    assert lines[-1] == f"job {job_id}: completed" and f"resumed from {where} " in resumed.stdout
    assert any("epoch 6/6 |" in line for line in lines[:-1]), resumed.stdout[-3000:]  # the job's last epoch line came before its state
    status = dict(line.split(None, 1) for line in jobs(jobs_db, "status", job_id).stdout.splitlines())
    assert status["state"] == "completed" and status["attempts"] == "2"
