"""The queue's admission loop, on the cluster: a detached Ray actor (one per database) that
starts pending jobs as Ray Jobs when the cluster has room for them, in order of priority,
then submission; keeps to the queue's `max_running`; and finds jobs whose Ray Job ended
without recording an outcome (a lost node, a restarted head), resuming them from their
newest checkpoint up to their `max_retries`.

    python -m trainyard.job_queue.admission URL STORAGE ALLOW   # a Ray Job: starts the actor, exits

The database stays the source of truth: the actor keeps nothing a restart would lose, so a
head that comes back (and anyone using the queue then) starts it again from the records.
It leaves once no job is pending or running, after saying so in the database.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sys
import threading
import time
from typing import Any

from trainyard._logging import get_logger
from trainyard.execution.ray_env import autoscaling
from trainyard.execution.ray_jobs import (
    PREFIX,
    alive_nodes,
    cluster_jobs_client,
    cluster_total,
    pin_here,
    ray_states,
    start_detached,
    submit_with_retry,
)
from trainyard.job_queue.records import HEARTBEAT_S, open_table, read_setting, write_setting

log = get_logger("trainyard.job_queue")

POLL_S = 0.5
BEAT_S = 2.0  # the heartbeat in the database (submitters take an actor 3 beats silent for gone)
IDLE_EXIT_S = 30.0  # nothing pending or running this long: the actor leaves
STOP_GRACE_S = 30.0  # a cancelled job's Ray Job still running this long after: stopped through Ray
LIVE = ("PENDING", "RUNNING")


def needs(row: dict[str, Any]) -> dict[str, float]:
    """What a job holds on the cluster while it runs: a CPU per worker (the one-worker job's
    driver trains in its own process and reserves it), a GPU per worker with use_gpu."""
    workers = row.get("num_workers") or 1
    return {"CPU": float(workers), "GPU": float(workers if row.get("use_gpu") else 0)}


def queue_order(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pending jobs in the order they start: higher priority first, then earlier submission."""
    return sorted(rows, key=lambda r: (-(r.get("priority") or 0), r["submitted_at"], r["id"]))


def plan(pending: list[dict[str, Any]], active: list[dict[str, Any]], total: dict[str, float],
         max_running: int | None) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """(jobs to start now, {job id: why it waits}) for pending jobs waiting for a launch.

    Strict order: a job that does not fit holds back every job behind it, so a large job is
    never starved by smaller ones that keep fitting first. Room is the cluster's resources
    less what the queue's running jobs hold."""
    free = dict(total)
    for row in active:
        for key, amount in needs(row).items():
            free[key] = free.get(key, 0.0) - amount
    start, waits, running, blocker = [], {}, len(active), None
    for row in queue_order(pending):
        if blocker is not None:
            waits[row["id"]] = blocker
            continue
        if max_running is not None and running >= max_running:
            blocker = f"the queue runs at most {max_running} job{'s' if max_running != 1 else ''} at once (max_running)"
            waits[row["id"]] = blocker
            continue
        short = {k: v for k, v in needs(row).items() if v > free.get(k, 0.0) + 1e-9}
        if short:
            waits[row["id"]] = "waiting for " + ", ".join(f"{v:g} {k} ({max(free.get(k, 0.0), 0):g} free)" for k, v in short.items())
            blocker = f"behind job {row['id']}, which waits for room"
            continue
        start.append(row)
        running += 1
        for key, amount in needs(row).items():
            free[key] = free.get(key, 0.0) - amount
    return start, waits


def lost(row: dict[str, Any], states: dict[str, tuple[str, str]], now: float | None = None) -> str | None:
    """Why a pending-or-running job's Ray Job is gone with no outcome recorded, or None if it
    lives. A job that records its own end is not running any more, so only a driver that
    died (a lost node, a restarted head, `ray job stop`) gets here; and only once its
    heartbeat has stopped too: a driver that outlives its Ray Job for a moment (it is ended
    with its supervisor, not at once) must not train beside the attempt that resumes it."""
    if not row.get("ray_job") or row["state"] not in ("pending", "running"):
        return None
    status, message = states.get(row["ray_job"], (None, ""))
    if status in LIVE:
        return None
    beat = row.get("heartbeat_at")
    if beat is not None and (now or time.time()) - beat < 3 * HEARTBEAT_S + 1:
        return None
    if status is None:
        return f"its Ray Job {row['ray_job']} is not on this cluster (the head was restarted, or the job's record outlived it)"
    return f"its Ray Job {row['ray_job']} ended {status}" + (f": {message.strip().splitlines()[-1]}" if message.strip() else "")


class Admitter:
    """The actor (see the module's doc). Threaded: `start` returns while `_loop` runs."""

    def __init__(self, url: str, storage_path: str, allow_shared_storage: bool):
        self.url, self.storage_path, self.allow_shared_storage = url, storage_path, allow_shared_storage
        self.engine, self.table, self.settings = open_table(url, with_settings=True)
        self._started = threading.Lock()
        self._running = False
        self._client = None
        self._beaten = 0.0

    def start(self) -> bool:
        """Start the loop (once); it has beaten once when this returns."""
        with self._started:
            if self._running:
                return False
            self._running = True
            self._beat()
            threading.Thread(target=self._loop, name="trainyard-admission", daemon=True).start()
            return True

    # -- the loop ------------------------------------------------------------------------

    def _loop(self) -> None:
        idle_since = time.monotonic()
        while True:
            try:
                busy = self._pass()
            except Exception:  # noqa: BLE001 - a database or Ray hiccup: said, and tried again
                log.exception("job queue admission: a pass failed; trying again")
                busy = True
            if busy:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > IDLE_EXIT_S:
                self._beat(gone=True)  # first: a submission from now on starts a new actor
                if not self._pass():  # nothing arrived meanwhile: leave
                    os._exit(0)  # noqa: SLF001 - the actor's process; Ray records it dead, its name free again
                self._beat()
                idle_since = time.monotonic()
            self._beat()
            time.sleep(POLL_S)

    def _pass(self) -> bool:
        """One look at the records and the cluster; whether any job is pending or running."""
        t = self.table
        recent = time.time() - 3600  # a cancelled job's Ray Job is watched for an hour, until it has ended
        with self.engine.connect() as c:
            rows = [dict(r) for r in c.execute(t.select().with_only_columns(
                t.c.id, t.c.state, t.c.priority, t.c.submitted_at, t.c.finished_at, t.c.attempts, t.c.num_workers,
                t.c.use_gpu, t.c.max_retries, t.c.retries, t.c.ray_job, t.c.reason, t.c.heartbeat_at,
            ).where(t.c.state.in_(("pending", "running")) | ((t.c.state == "cancelled") & t.c.ray_job.is_not(None) & (t.c.finished_at > recent)))).mappings()]
        if not rows:
            return False
        states = ray_states(self._jobs())
        stopping = any(r["state"] == "cancelled" and states.get(r["ray_job"], ("",))[0] in LIVE for r in rows)
        for row in rows:
            self._stop_if_cancelled(row, states)
            why = lost(row, states)
            if why is not None:
                self._resume_or_interrupt(row, why)
        with self.engine.connect() as c:
            rows = [dict(r) for r in c.execute(t.select().with_only_columns(
                t.c.id, t.c.state, t.c.priority, t.c.submitted_at, t.c.num_workers, t.c.use_gpu, t.c.ray_job, t.c.reason, t.c.attempts,
            ).where(t.c.state.in_(("pending", "running")))).mappings()]
        waiting = [r for r in rows if r["state"] == "pending" and not r["ray_job"]]
        active = [r for r in rows if r not in waiting]
        start, waits = plan(waiting, active, cluster_total(), self._max_running())
        for row in start:
            self._launch(row)
        with self.engine.begin() as c:
            for row in waiting:
                if row not in start and waits.get(row["id"]) != row["reason"]:
                    c.execute(t.update().where((t.c.id == row["id"]) & (t.c.state == "pending") & t.c.ray_job.is_(None))
                              .values(reason=waits.get(row["id"])))
        return bool(rows) or stopping

    def _stop_if_cancelled(self, row: dict[str, Any], states: dict[str, tuple[str, str]]) -> None:
        """A cancelled job stops itself after saving its position (its driver watches the
        record); one whose Ray Job has not ended STOP_GRACE_S later, or that has not started
        training yet, is stopped through Ray."""
        if row["state"] != "cancelled" or not row["ray_job"] or states.get(row["ray_job"], ("",))[0] not in LIVE:
            return
        if (row["num_workers"] or 1) > 1 or time.time() - (row["finished_at"] or 0) > STOP_GRACE_S:
            log.info("job %s: cancelled, stopping its Ray Job %s", row["id"], row["ray_job"])
            try:
                self._jobs().stop_job(row["ray_job"])
            except Exception:  # noqa: BLE001 - it ended meanwhile
                pass

    def _resume_or_interrupt(self, row: dict[str, Any], why: str) -> None:
        t = self.table
        retries, allowed = row["retries"] or 0, row["max_retries"] or 0
        mine = (t.c.id == row["id"]) & (t.c.attempts == row["attempts"]) & t.c.state.in_(("pending", "running"))
        with self.engine.begin() as c:
            if retries < allowed:
                changed = c.execute(t.update().where(mine).values(
                    state="pending", attempts=row["attempts"] + 1, retries=retries + 1, ray_job=None, started_at=None, launched_at=None,
                    reason=f"resuming from its newest checkpoint (automatic retry {retries + 1} of {allowed}): attempt {row['attempts']} was lost, {why}",
                )).rowcount
            else:
                changed = c.execute(t.update().where(mine).values(
                    state="interrupted", finished_at=time.time(), ray_job=None,
                    error=f"attempt {row['attempts']} was lost: {why}. {'Its automatic retries are spent; ' if allowed else ''}"
                          "queue.resume_job(job_id) (`trainyard jobs resume ID`) continues it from its newest checkpoint",
                )).rowcount
        if changed:
            log.warning("job %s: attempt %d lost (%s)%s", row["id"], row["attempts"], why, ": resuming it" if retries < allowed else "")

    def _launch(self, row: dict[str, Any]) -> None:
        """Start a pending job's attempt as a Ray Job (its id recorded first, so a launch is
        never lost: a record naming a Ray Job the cluster lacks is resumed)."""
        t, attempt = self.table, row["attempts"]
        submission_id = ray_job_id(row["id"], attempt)
        with self.engine.begin() as c:
            claimed = c.execute(t.update().where(
                (t.c.id == row["id"]) & (t.c.attempts == attempt) & (t.c.state == "pending") & t.c.ray_job.is_(None)
            ).values(ray_job=submission_id, reason=None, launched_at=time.time())).rowcount
        if not claimed:
            return
        workers, gpu = row["num_workers"] or 1, bool(row["use_gpu"])
        argv = [self.url, row["id"], str(attempt), self.storage_path, "1" if self.allow_shared_storage else "0"]
        options: dict[str, Any] = {"entrypoint_num_cpus": 1, "entrypoint_num_gpus": 1 if gpu else 0} if workers == 1 else {}
        if self.engine.dialect.name == "sqlite":  # the database is a file on this node: the job's driver runs here
            options["entrypoint_resources"] = pin_here()
        try:
            submit_with_retry(
                self._jobs(), entrypoint=f"{shlex.quote(sys.executable)} -m trainyard.job_queue.runner {shlex.join(argv)}",
                submission_id=submission_id, metadata={"trainyard_job": row["id"], "attempt": str(attempt)}, **options,
            )
        except Exception as e:  # noqa: BLE001 - refused by Ray: the job cannot run as it is
            with self.engine.begin() as c:
                c.execute(t.update().where((t.c.id == row["id"]) & (t.c.attempts == attempt) & (t.c.state == "pending")).values(
                    state="failed", finished_at=time.time(), error=f"Ray refused the job's Ray Job {submission_id}: {type(e).__name__}: {e}"))
            return
        log.info("job %s: attempt %d started as Ray Job %s", row["id"], attempt, submission_id)

    # -- the cluster and the settings ------------------------------------------------------

    def _jobs(self):
        if self._client is None:
            self._client = cluster_jobs_client()
        return self._client

    def _max_running(self) -> int | None:
        value = read_setting(self.engine, self.settings, "max_running")
        return None if value in (None, "") else int(value)

    def _beat(self, gone: bool = False) -> None:
        """The heartbeat submitters read to know the actor is here (and the cluster's nodes,
        which they check a job's size against)."""
        if not gone and time.monotonic() - self._beaten < BEAT_S:
            return
        self._beaten = 0.0 if gone else time.monotonic()
        seen = {"nodes": alive_nodes(), "autoscaling": autoscaling()} if not gone else {}
        write_setting(self.engine, self.settings, "admitter", json.dumps(seen), at=0.0 if gone else time.time())


def admitter_name(url: str) -> str:
    """The admission actor's name on the cluster: one per database."""
    return f"{PREFIX}queue-{hashlib.sha1(url.encode()).hexdigest()[:12]}"


def ray_job_id(job_id: str, attempt: int) -> str:
    """The Ray Job submission id of a job's attempt (`ray job list` shows it)."""
    return f"{PREFIX}{job_id}-{attempt}"


def main(argv: list[str]) -> int:
    """The bootstrap Ray Job: get or create this database's actor, start its loop, exit."""
    url, storage_path, allow = argv[0], argv[1], argv[2] == "1"
    engine, _ = open_table(url)  # a bad URL or an unreachable database fails here, said in this job's log
    # a SQLite file is on this node (the head, where Ray Jobs' drivers run): the actor stays with it
    started = start_detached(Admitter, admitter_name(url), (url, storage_path, allow), "start", on_this_node=engine.dialect.name == "sqlite")
    print(f"the job queue's admission actor {admitter_name(url)}: {'started' if started else 'already running'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
