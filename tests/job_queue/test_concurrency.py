"""The job queue under concurrent first use: every submission returns an id for a job that
runs, or raises and leaves no row; a new database opens from many processes at once."""

import json
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


def test_a_new_database_opens_from_many_processes_at_once(tmp_path):
    url = f"sqlite:///{tmp_path}/jobs.db"
    start = time.time() + 3
    procs = [subprocess.Popen([sys.executable, "-c", OPEN, url, str(start)], stderr=subprocess.PIPE, text=True) for _ in range(8)]
    errors = [p.communicate(timeout=120)[1] for p in procs if p.wait(timeout=120) != 0]
    assert not errors, errors[0]


SUBMIT = """
import json, sys, threading, torch
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
for t in threads: t.start()
for t in threads: t.join()
states = [queue.wait(i, timeout=240) for i in ids]
print("RESULT " + json.dumps({"ids": ids, "errors": errors, "states": states, "rows": [r.id for r in queue.list_jobs()]}))
"""


@pytest.mark.slow
def test_first_use_submissions_from_many_threads_all_run(tmp_path):
    """Ray is not connected yet in that process: every thread's submission connects at once."""
    url = f"sqlite:///{tmp_path}/jobs.db"
    proc = subprocess.run([sys.executable, "-c", SUBMIT, url, str(tmp_path / "jobs"), "8"], capture_output=True, text=True, timeout=600,
                          cwd=ROOT, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["errors"] == [] and len(out["ids"]) == 8
    assert sorted(out["rows"]) == sorted(out["ids"])  # nothing phantom, nothing lost
    assert out["states"] == ["completed"] * 8


def test_a_submission_that_cannot_launch_leaves_no_row(ray_session, tmp_path, monkeypatch):
    import torch

    from tests.helpers import lm_factory
    from trainyard import TrainingConfig
    from trainyard.job_queue import JobConfig, JobQueue, queue as queue_module

    def cannot_launch(*args, **kwargs):
        raise RuntimeError("the cluster refused the task")

    monkeypatch.setattr(queue_module, "start_task", cannot_launch)
    queue = JobQueue(f"sqlite:///{tmp_path}/jobs.db", storage_path=tmp_path / "jobs")
    job = JobConfig(model_factory=lm_factory(), config={"vocab_size": 32}, train_data=[torch.arange(3, 11)] * 4, training_config=TrainingConfig(epochs=1))
    with pytest.raises(RuntimeError, match="the cluster refused the task"):
        queue.submit_job(job)
    assert queue.list_jobs() == []
