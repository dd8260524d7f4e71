"""The queue's admission on the cluster: jobs wait as pending until there is room, start by
priority then submission, keep to max_running, and come back after the head is restarted."""

import os
import signal
import time

import pytest
import torch
from trainyard import Trainer, TrainingConfig
from trainyard.job_queue.admission import plan

from tests.helpers import lm_factory, slow_batches

CONFIG = {"vocab_size": 32}
TOTAL = {"CPU": 2.0, "GPU": 0.0}


def _row(job_id, priority=0, submitted_at=0.0, workers=1, gpu=False):
    return {"id": job_id, "priority": priority, "submitted_at": submitted_at, "num_workers": workers, "use_gpu": gpu}


def test_pending_jobs_start_by_priority_then_submission_while_they_fit():
    pending = [_row("a", 0, 1), _row("b", 5, 2), _row("c", 5, 3), _row("d", 1, 4)]
    start, waits = plan(pending, [], TOTAL, None)
    assert [r["id"] for r in start] == ["b", "c"]
    assert waits == {"d": "waiting for 1 CPU (0 free)", "a": "behind job d, which waits for room"}
    # one of the two already running: one more fits
    start, waits = plan(pending, [_row("x")], TOTAL, None)
    assert [r["id"] for r in start] == ["b"] and waits["c"] == "waiting for 1 CPU (0 free)"


def test_a_job_that_does_not_fit_holds_back_the_smaller_ones_behind_it():
    """Strict order: a 2-worker job waiting for both CPUs is not starved by 1-worker jobs."""
    start, waits = plan([_row("big", 1, 1, workers=2), _row("small", 0, 2)], [_row("x")], TOTAL, None)
    assert start == [] and waits == {"big": "waiting for 2 CPU (1 free)", "small": "behind job big, which waits for room"}
    start, _ = plan([_row("gpu", 0, 1, gpu=True)], [], TOTAL, None)
    assert start == []


def test_max_running_limits_the_queue_and_zero_holds_it():
    pending = [_row("a", 0, 1), _row("b", 0, 2)]
    start, waits = plan(pending, [], TOTAL, 1)
    assert [r["id"] for r in start] == ["a"] and waits == {"b": "the queue runs at most 1 job at once (max_running)"}
    start, waits = plan(pending, [], TOTAL, 0)
    assert start == [] and set(waits) == {"a", "b"} and "at most 0 jobs" in waits["a"]


def _job(priority=0, epochs=2, pause=0.3, **kwargs):
    from trainyard.job_queue import JobConfig

    return JobConfig(model_factory=lm_factory(), config=CONFIG, train_data=[torch.arange(3, 11)] * 8, priority=priority,
                     training_config=TrainingConfig(epochs=epochs, batch_size=2, **kwargs), hooks=[slow_batches(pause)])


@pytest.mark.slow
def test_six_jobs_on_a_cluster_that_fits_two_run_two_at_a_time_in_priority_order(queue_cluster, jobs_db, tmp_path):
    from trainyard.job_queue import JobQueue

    queue = JobQueue(jobs_db, storage_path=tmp_path / "jobs")
    queue.set_max_running(0)  # held: all six are queued before any starts
    priorities = [0, 3, 1, 3, 2, 0]
    ids = [queue.submit_job(_job(p)) for p in priorities]
    expected = [ids[1], ids[3], ids[4], ids[2], ids[0], ids[5]]  # by priority, then submission
    listed = {r.id: r for r in queue.list_jobs()}
    assert [listed[i].position for i in expected] == [1, 2, 3, 4, 5, 6]
    deadline = time.monotonic() + 30
    while not all(queue.get_job(i).reason for i in ids) and time.monotonic() < deadline:  # the admitter says why they wait
        time.sleep(0.2)
    assert {queue.get_job(i).reason for i in ids} == {"the queue runs at most 0 jobs at once (max_running)"}

    queue.set_max_running(None)
    reasons, deadline = set(), time.monotonic() + 300
    while time.monotonic() < deadline:
        records = queue.list_jobs()
        assert sum(r.state == "running" for r in records) <= 2
        reasons |= {r.reason for r in records if r.state == "pending" and r.reason}
        if all(r.state == "completed" for r in records):
            break
        time.sleep(0.1)
    records = {r.id: queue.get_job(r.id) for r in queue.list_jobs()}
    assert all(r.state == "completed" for r in records.values()), [(r.state, r.error) for r in records.values()]
    assert sorted(ids, key=lambda i: records[i].launched_at) == expected
    spans = [(records[i].started_at, records[i].finished_at) for i in ids]
    most = max(sum(s <= t < f for s, f in spans) for t, _ in spans)
    assert most == 2, spans  # two at a time: never three, and not one after another
    assert "waiting for 1 CPU (0 free)" in reasons and any(r.startswith("behind job ") for r in reasons), reasons


@pytest.mark.slow
def test_after_the_head_is_killed_and_restarted_the_queue_goes_on(tmp_path, monkeypatch):
    """The head dies (SIGKILL, with the running job's driver). On the new head, the first use
    of the queue starts its admitter from the records: the running job resumes from its
    newest checkpoint (an automatic retry) to the uninterrupted losses, and the pending one
    starts after it."""
    from trainyard.engine.run_folder import latest_valid
    from trainyard.job_queue import JobQueue

    from tests.ray_heads import head_env, start_head

    first = start_head(head_env(), num_cpus=2)
    try:
        monkeypatch.setenv("RAY_ADDRESS", first.address)
        queue = JobQueue(f"sqlite:///{tmp_path}/jobs.db", storage_path=tmp_path / "jobs")
        queue.set_max_running(1)
        running = queue.submit_job(_job(epochs=3, pause=0.4, checkpoint_every_n_steps=1))
        waiting = queue.submit_job(_job())
        deadline = time.monotonic() + 120
        while latest_valid(tmp_path / "jobs" / running) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert latest_valid(tmp_path / "jobs" / running) is not None, queue.get_job(running)
        assert queue.get_job_status(waiting) == "pending"
        driver = int(queue._row(running)["worker"].rsplit(":", 1)[1])
        os.kill(driver, signal.SIGKILL)  # the head's machine is lost, and the job's driver on it
        first.kill(signal.SIGKILL)
    finally:
        first.stop()
    assert queue.get_job_status(running) == "running"  # as recorded: nobody has looked yet

    second = start_head(head_env(), num_cpus=2)
    try:
        monkeypatch.setenv("RAY_ADDRESS", second.address)
        queue = JobQueue(f"sqlite:///{tmp_path}/jobs.db", storage_path=tmp_path / "jobs")
        assert queue.wait(waiting, timeout=300) == "completed", queue.get_job(waiting).error
        assert queue.wait(running, timeout=60) == "completed", queue.get_job(running).error
        resumed, after = queue.get_job(running), queue.get_job(waiting)
        assert resumed.attempts == 2 and resumed.ray_job == f"trainyard-{running}-2"
        assert resumed.launched_at < after.launched_at  # submitted first, so started first again (max_running=1)
        log = (tmp_path / "jobs" / running / "job.log").read_text()
        assert "attempt 2 started" in log and "resumed from" in log, log[-2000:]
        direct = Trainer(lm_factory(), CONFIG, TrainingConfig(epochs=3, batch_size=2, checkpoint_dir=str(tmp_path / "d"))).train(
            [torch.arange(3, 11)] * 8)
        assert queue.get_job_results(running)["loss_history"] == direct["loss_history"]
    finally:
        second.stop()


def test_a_lost_ray_job_is_resumed_only_once_its_driver_has_stopped_beating():
    from trainyard.job_queue.admission import lost
    from trainyard.job_queue.records import HEARTBEAT_S

    now = 1000.0
    row = {"id": "j", "state": "running", "ray_job": "trainyard-j-1", "heartbeat_at": now - 1}
    assert lost(row, {"trainyard-j-1": ("RUNNING", "")}, now) is None
    assert lost(row, {}, now) is None  # unknown to this cluster, but its driver still beats
    stale = {**row, "heartbeat_at": now - 3 * HEARTBEAT_S - 2}
    assert "is not on this cluster" in lost(stale, {}, now)
    assert lost(stale, {"trainyard-j-1": ("FAILED", "boom\nnode died")}, now).endswith("ended FAILED: node died")
    never = {**row, "state": "pending", "heartbeat_at": None}  # launched, its driver never claimed it
    assert "STOPPED" in lost(never, {"trainyard-j-1": ("STOPPED", "")}, now)
    assert lost({**stale, "state": "completed"}, {}, now) is None
