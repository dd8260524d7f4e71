"""Trust boundaries and exact states: the queue's pickles are read only from a database no one
else can write; a job's record is claimed, finished and resumed by one attempt at a time."""

import os
import pickle
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from trainyard._trust import SharedStorageError
from trainyard.job_queue import JobQueue
from trainyard.job_queue.records import HEARTBEAT_S, STALE_S, observed_state
from trainyard.job_queue.runner import run_job

NOBODY = 65534  # a uid and gid that are not this user's


class _Attack:
    """Unpickling this creates `marker`: any code could run in its place."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _planted(tmp_path, state):
    """A queue whose database holds a job whose payload and results are an attack."""
    db = tmp_path / "q" / "jobs.db"
    queue = JobQueue(f"sqlite:///{db}", storage_path=tmp_path / "jobs")
    marker = tmp_path / "code-ran"
    bomb = pickle.dumps(_Attack(marker))
    with queue._engine.begin() as c:
        c.execute(queue._table.insert().values(
            id=state, state=state, submitted_at=time.time(), attempts=1, checkpoint_dir=str(tmp_path / "jobs" / state),
            payload=bomb, results=bomb, owner=f"{socket.gethostname()}:{os.getpid()}",
        ))
    return queue, db, marker


def test_a_new_database_and_its_journal_are_owner_only(tmp_path):
    queue, db, _ = _planted(tmp_path, "completed")
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert stat.S_IMODE(db.with_name("jobs.db-wal").stat().st_mode) == 0o600  # SQLite copies the mode
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
    assert queue.list_jobs()[0].state == "completed"


SHARINGS = {
    "world-writable": lambda p: os.chmod(p, 0o606),
    "group-writable": lambda p: (os.chown(p, -1, NOBODY), os.chmod(p, 0o660)),
    "owned by another user": lambda p: os.chown(p, NOBODY, -1),
}


@pytest.mark.parametrize("sharing", SHARINGS)
def test_pickles_are_never_read_from_a_database_others_can_write(tmp_path, sharing):
    queue, db, marker = _planted(tmp_path, "completed")
    with queue._engine.begin() as c:
        c.execute(queue._table.insert().values(id="failed", state="failed", submitted_at=time.time(), attempts=1,
                                               checkpoint_dir="x", payload=pickle.dumps(_Attack(marker))))
    SHARINGS[sharing](db)
    expected = rf"the job queue's database {db} is {sharing}.*chmod go-w.*allow_shared_storage=True or TRAINYARD_ALLOW_SHARED_STORAGE=1"
    with pytest.raises(SharedStorageError, match=expected):
        queue.get_job_results("completed")
    with pytest.raises(SharedStorageError, match=expected):
        queue.resume_job("failed")  # refused before anything is launched or changed
    assert queue.get_job("failed").state == "failed" and queue.get_job("failed").attempts == 1
    assert not marker.exists()
    # the opt-out is an explicit choice, and the only thing that lets it through
    JobQueue(f"sqlite:///{db}", allow_shared_storage=True).get_job_results("completed").close()
    assert marker.exists()


def test_a_database_in_a_folder_others_can_write_is_refused(tmp_path, monkeypatch):
    queue, db, marker = _planted(tmp_path, "completed")
    os.chmod(db.parent, 0o777)  # anyone could put another file in its place
    with pytest.raises(SharedStorageError, match=rf"{db.parent} is world-writable \(the folder holding jobs.db\)"):
        queue.get_job_results("completed")
    monkeypatch.setenv("TRAINYARD_ALLOW_SHARED_STORAGE", "1")
    queue.get_job_results("completed").close()
    assert marker.exists()


def test_the_job_process_refuses_the_payload_too_and_records_why(tmp_path):
    queue, db, marker = _planted(tmp_path, "pending")
    os.chmod(db, 0o606)
    with pytest.raises(SharedStorageError):
        run_job(queue.url, "pending", 1, queue._row("pending")["payload"], str(tmp_path / "jobs"))
    record = queue.get_job("pending")
    assert record.state == "failed" and "SharedStorageError" in record.error and "world-writable" in record.error
    assert not marker.exists()


def test_a_task_of_an_earlier_attempt_neither_claims_nor_finishes_the_job(tmp_path):
    queue, db, marker = _planted(tmp_path, "pending")
    with queue._engine.begin() as c:
        c.execute(queue._table.update().values(attempts=2))  # launched again since
    run_job(queue.url, "pending", 1, b"never read", str(tmp_path / "jobs"))
    row = queue._row("pending")
    assert (row["state"], row["started_at"], row["worker"]) == ("pending", None, None)


def test_concurrent_resumes_queue_a_job_once(tmp_path, monkeypatch):
    queue, db, _ = _planted(tmp_path, "failed")
    looks = []
    monkeypatch.setattr(JobQueue, "_ensure_admitter", lambda self, **kw: looks.append(kw))  # no cluster: the record is the point
    queues = [JobQueue(queue.url) for _ in range(8)]
    outcomes, start = [], threading.Barrier(8)

    def resume(q):
        start.wait()
        try:
            q.resume_job("failed")
            outcomes.append("resumed")
        except (RuntimeError, ValueError) as e:
            outcomes.append(str(e))

    threads = [threading.Thread(target=resume, args=(q,)) for q in queues]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("resumed") == 1, outcomes
    assert all("changed while it was being resumed" in o or "is pending" in o for o in outcomes if o != "resumed")
    row = queue._row("failed")
    assert (row["state"], row["attempts"], row["ray_job"]) == ("pending", 2, None)


def _row(state, worker, heartbeat_age):
    return {"state": state, "worker": worker, "heartbeat_at": None if heartbeat_age is None else time.time() - heartbeat_age}


def test_a_job_reads_interrupted_only_once_the_process_running_it_is_gone():
    host = socket.gethostname()
    dead = f"{host}:{subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True).stdout.strip()}"
    alive = f"{host}:{os.getpid()}"
    # its process here ended without recording it: interrupted once three beats are missed
    assert observed_state(_row("running", dead, 0.5)) == "running"
    assert observed_state(_row("running", dead, 3 * HEARTBEAT_S + 2)) == "interrupted"
    # alive and beating: running, however long ago its submitter left
    assert observed_state(_row("running", alive, 3 * HEARTBEAT_S + 2)) == "running"
    # a process on another node is known gone by a minute's silence
    assert observed_state(_row("running", "elsewhere:1", 3 * HEARTBEAT_S + 2)) == "running"
    assert observed_state(_row("running", "elsewhere:1", STALE_S + 1)) == "interrupted"
    # a pending job waits for the admitter: never interrupted by itself
    assert observed_state(_row("pending", None, None)) == "pending"
    assert observed_state(_row("interrupted", dead, 100)) == "interrupted"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="a zombie is told from /proc")
def test_a_killed_job_process_not_yet_reaped_by_its_parent_is_gone():
    """A SIGKILLed process stays a zombie until its parent waits for it: its job reads
    interrupted once its beats are missed, not a minute later."""
    host = socket.gethostname()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.2)
        assert observed_state(_row("running", f"{host}:{child.pid}", 3 * HEARTBEAT_S + 2)) == "running"
        os.kill(child.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert observed_state(_row("running", f"{host}:{child.pid}", 3 * HEARTBEAT_S + 2)) == "interrupted"
    finally:
        child.kill()
        child.wait()


def test_a_database_from_before_the_worker_column_opens_with_its_rows(tmp_path):
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as c:
        c.execute("""CREATE TABLE trainyard_jobs (id VARCHAR(32) PRIMARY KEY, name VARCHAR(200), state VARCHAR(16) NOT NULL,
                     submitted_at FLOAT NOT NULL, started_at FLOAT, finished_at FLOAT, heartbeat_at FLOAT, attempts INTEGER NOT NULL,
                     owner VARCHAR(300), error TEXT, checkpoint_dir TEXT NOT NULL, checkpoint_path TEXT, payload BLOB NOT NULL, results BLOB)""")
        c.execute("INSERT INTO trainyard_jobs (id, state, submitted_at, attempts, checkpoint_dir, payload) VALUES ('old', 'completed', 1.0, 1, 'x', x'00')")
    os.chmod(db, 0o600)
    queue = JobQueue(f"sqlite:///{db}")
    assert [(r.id, r.state) for r in queue.list_jobs()] == [("old", "completed")]
    assert queue._row("old")["worker"] is None


def test_a_database_writable_by_the_users_private_group_is_accepted(tmp_path):
    """On umask-002 systems files are group-writable, and the group is the user's own
    (named after them, nobody else in it): that shares nothing, so it is not refused."""
    import grp
    import pwd

    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid())
    if group.gr_name != user or set(group.gr_mem) - {user}:
        pytest.skip(f"this user's primary group {group.gr_name!r} is not a private group")
    queue, db, marker = _planted(tmp_path, "completed")
    os.chown(db, -1, os.getgid())
    os.chmod(db, 0o660)
    queue.get_job_results("completed").close()
    assert marker.exists()


def test_a_reader_does_not_start_the_admission_actor_at_every_look_while_that_fails(tmp_path, monkeypatch):
    """`get_job` of a pending job starts the cluster's admission actor if none beats; where
    that fails (a cluster without trainyard), a polling reader must not submit a bootstrap
    Ray Job at every poll, and never raises for it."""
    from trainyard.job_queue import queue as queue_module

    queue, _, _ = _planted(tmp_path, "pending")
    tries = []

    def fails(*args, **kwargs):
        tries.append(args[2])
        raise RuntimeError("the job queue's admission actor did not start on the cluster")

    monkeypatch.setattr(queue_module, "start_and_wait", fails)
    monkeypatch.setattr(JobQueue, "_jobs", lambda self, start_head=True: object())
    for _ in range(5):
        assert queue.get_job_status("pending") == "pending"
    assert len(tries) == 1
    with pytest.raises(RuntimeError, match="did not start on the cluster"):  # a submission says why
        queue._ensure_admitter(start_head=True)
    assert len(tries) == 2
