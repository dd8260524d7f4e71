"""The job queue under concurrent first use: every submission returns an id for a job that
runs, or raises and leaves no row; a new database opens from many processes at once."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT

OPEN = """
import sys, time
from trainyard.job_queue import JobQueue
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # all start together
JobQueue(sys.argv[1])
"""


@pytest.mark.slow  # many processes at once
def test_a_new_database_opens_from_many_processes_at_once(jobs_db):
    url = jobs_db
    start = time.time() + 3
    procs = [subprocess.Popen([sys.executable, "-c", OPEN, url, str(start)], stderr=subprocess.PIPE, text=True) for _ in range(8)]
    errors = [p.communicate(timeout=120)[1] for p in procs if p.wait(timeout=120) != 0]
    assert not errors, errors[0]


SUBMIT = """
import json, os, sys, threading, time, torch
from tests.helpers import lm_factory
from trainyard import TrainingConfig
from trainyard.job_queue import JobConfig, JobQueue

queue = JobQueue(sys.argv[1], storage_path=sys.argv[2])
ids, errors = [], []
def submit():
    try:
        ids.append(queue.submit_job(JobConfig(model_factory=lm_factory(), config={"vocab_size": 32},
                                              train_data=[torch.arange(3, 11)] * 4, training_config=TrainingConfig(epochs=1))))
    except Exception as e:
        errors.append(repr(e))
threads = [threading.Thread(target=submit) for _ in range(int(sys.argv[3]))]
time.sleep(max(0.0, float(os.environ.get("START_AT", 0)) - time.time()))  # every process starts together
for t in threads: t.start()
for t in threads: t.join()
if os.environ.get("CANCEL"):  # what the test asks of these jobs is that they exist, once each
    for i in ids: queue.cancel_job(i)
states = [queue.wait(i, timeout=240) for i in ids]
print("RESULT " + json.dumps({"ids": ids, "errors": errors, "states": states, "rows": [r.id for r in queue.list_jobs()]}))
"""


@pytest.mark.slow
def test_first_use_submissions_from_many_threads_all_run(queue_cluster, tmp_path):
    """No admission actor yet for that database: every thread's submission starts one at
    once, and one runs them all."""
    url = f"sqlite:///{tmp_path}/jobs.db"
    proc = subprocess.run([sys.executable, "-c", SUBMIT, url, str(tmp_path / "jobs"), "8"], capture_output=True, text=True, timeout=600,
                          cwd=ROOT, env=_env())
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["errors"] == [] and len(out["ids"]) == 8
    assert sorted(out["rows"]) == sorted(out["ids"])  # nothing phantom, nothing lost
    assert out["states"] == ["completed"] * 8


def test_a_submission_that_cannot_launch_leaves_no_row(queue_cluster, tmp_path, monkeypatch):
    import torch
    from trainyard import TrainingConfig
    from trainyard.job_queue import JobConfig, JobQueue
    from trainyard.job_queue import queue as queue_module

    from tests.helpers import lm_factory

    def cannot_launch(*args, **kwargs):
        raise RuntimeError("the cluster refused the job")

    monkeypatch.setattr(queue_module, "start_and_wait", cannot_launch)
    queue = JobQueue(f"sqlite:///{tmp_path}/jobs.db", storage_path=tmp_path / "jobs")
    job = JobConfig(model_factory=lm_factory(), config={"vocab_size": 32}, train_data=[torch.arange(3, 11)] * 4, training_config=TrainingConfig(epochs=1))
    with pytest.raises(RuntimeError, match="the cluster refused the job"):
        queue.submit_job(job)
    assert queue.list_jobs() == []


def _run_submitters(url, storage, processes, threads, env):
    start = time.time() + 8  # after every interpreter has imported torch
    procs = [subprocess.Popen([sys.executable, "-c", SUBMIT, url, str(storage), str(threads)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=ROOT, env={**env, "START_AT": str(start)})
             for _ in range(processes)]
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
        assert lines, stdout[-2000:] + stderr[-3000:]
        outs.append(json.loads(lines[-1][len("RESULT "):]))
    return outs


def _env(**extra):
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


@pytest.mark.slow
def test_concurrent_submissions_from_many_processes_against_a_running_cluster(queue_cluster, tmp_path, jobs_db):
    """4 processes x 25 threads, all submitting at once to one database (SQLite, PostgreSQL)
    and one cluster. The jobs are cancelled once submitted (that every job runs to completion
    is the test above, with 8): 100 jobs on a 2-CPU head would take minutes here."""
    url = jobs_db
    outs = _run_submitters(url, tmp_path / "jobs", 4, 25, _env(CANCEL="1"))
    ids = [i for out in outs for i in out["ids"]]
    assert [e for out in outs for e in out["errors"]] == []
    assert len(ids) == len(set(ids)) == 100
    from trainyard.job_queue import JobQueue

    rows = JobQueue(url).list_jobs()
    assert sorted(r.id for r in rows) == sorted(ids)  # 0 lost, 0 phantom
    assert {r.state for r in rows} <= {"cancelled", "completed"}  # each ran, or was stopped as asked


@pytest.mark.slow  # submitting processes of their own
def test_with_ray_unreachable_every_submission_raises_at_once_and_leaves_no_row(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"sqlite:///{tmp_path}/jobs.db"
    began = time.monotonic()
    (out,) = _run_submitters(url, tmp_path / "jobs", 1, 8, _env(RAY_ADDRESS=f"127.0.0.1:{port}"))
    assert out["ids"] == [] and out["rows"] == []
    assert len(out["errors"]) == 8 and all(f"no Ray cluster answers at 127.0.0.1:{port}" in e for e in out["errors"]), out["errors"][:1]
    assert time.monotonic() - began < 120  # Ray itself would wait minutes per attempt


KILLED = """
import os, signal, sys, time, torch
from tests.helpers import lm_factory, slow_batches
from trainyard import TrainingConfig
from trainyard.job_queue import JobConfig, JobQueue

queue = JobQueue(sys.argv[1], storage_path=sys.argv[2])
job_id = queue.submit_job(JobConfig(model_factory=lm_factory(), config={"vocab_size": 32}, train_data=[torch.arange(3, 11)] * 16,
                                    training_config=TrainingConfig(epochs=3, batch_size=2), hooks=[slow_batches(0.15)]))
print(job_id, flush=True)
while queue.get_job_status(job_id) != "running":
    time.sleep(0.05)
time.sleep(1.0)  # past its first steps
os.killpg(os.getpid(), signal.SIGKILL)  # the submitter and everything in its process group
"""


@pytest.mark.slow
def test_a_job_outlives_its_submitters_process_group_killed(queue_cluster, tmp_path, jobs_db):
    """Before Ray Jobs, a job was a task of its submitter and died with it (interrupted).
    Now the submitter's whole process group is SIGKILLed mid-run and the job runs on to
    completion, its one attempt unbroken."""
    from trainyard.job_queue import JobQueue

    url = jobs_db
    proc = subprocess.Popen([sys.executable, "-c", KILLED, url, str(tmp_path / "jobs")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, env=_env(), start_new_session=True)
    job_id = proc.stdout.readline().strip()
    assert job_id, proc.communicate(timeout=60)[1][-3000:]
    assert proc.wait(timeout=120) == -signal.SIGKILL
    queue = JobQueue(url)
    assert queue.get_job_status(job_id) == "running"
    assert queue.wait(job_id, timeout=240) == "completed", queue.get_job(job_id).error
    record = queue.get_job(job_id)
    assert record.attempts == 1 and record.error is None and record.ray_job == f"trainyard-{job_id}-1"
    assert len(queue.get_job_results(job_id)["metrics_summary"]) == 3  # every epoch, in one attempt
    listed = subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "job", "list", "--address", queue_cluster.address],
                            capture_output=True, text=True, timeout=120)
    assert f"submission_id='trainyard-{job_id}-1'" in listed.stdout, listed.stdout[-2000:] + listed.stderr[-2000:]
