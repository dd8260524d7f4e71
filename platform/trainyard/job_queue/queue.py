"""The job queue's API: submit, control and read jobs; the jobs themselves run as Ray Jobs."""

from __future__ import annotations

import json
import os
import pickle
import re
import shlex
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainyard._logging import get_logger, show_logs
from trainyard._trust import check_private, make_private_dir
from trainyard.engine.config import TrainingConfig
from trainyard.execution.ray_env import unsatisfiable
from trainyard.execution.ray_jobs import dashboard_address, jobs_client, start_and_wait
from trainyard.execution.remote import dumps, loads
from trainyard.job_queue.admission import admitter_name, queue_order
from trainyard.job_queue.records import (
    FINISHED,
    JOB_STATES,
    JobRecord,
    absolute_sqlite,
    claim_setting,
    database_files,
    default_storage,
    open_table,
    read_setting,
    to_record,
    user,
    write_setting,
)
from trainyard.storage import STORAGE_VARIABLE, is_uri, join

log = get_logger("trainyard.job_queue")
ADMITTER_FRESH_S = 6.0  # an admission actor whose heartbeat is older is taken for gone (it beats every 2 s)
BOOTSTRAP_S = 120.0  # the longest an admission actor takes to start
QUIET_RETRY_S = 30.0  # a reader that failed to start it tries again this much later
_BOOTSTRAPPING = threading.Lock()  # this process's threads start an admission actor one at a time


@dataclass
class JobConfig:
    """What to train: the arguments of `Trainer(...)` and `train(...)`, plus resources."""

    model_factory: Any  # a zero-argument function returning an nn.Module (or a module)
    config: Any = None
    train_data: Any = None
    val_data: Any = None
    training_config: Any = field(default_factory=TrainingConfig)
    task_spec: Any = None
    hooks: list = field(default_factory=list)
    num_workers: int = 1  # > 1: a Ray Train run with DDP
    use_gpu: bool = False
    name: str | None = None
    priority: int = 0  # higher starts first; equal priorities in submission order
    max_retries: int = 2  # times a job whose Ray Job was lost (a node, the head) is resumed by itself
    owner: str | None = None  # who submits it (default: the OS user)

    def __post_init__(self) -> None:
        if not callable(self.model_factory):
            raise TypeError(f"JobConfig.model_factory must be a function returning a torch.nn.Module (or a module), got {type(self.model_factory).__name__}")
        if self.train_data is None:
            raise ValueError("JobConfig.train_data is None: a job needs training data")
        if isinstance(self.training_config, dict):
            self.training_config = TrainingConfig.from_dict(self.training_config)
        if not isinstance(self.training_config, TrainingConfig):
            raise TypeError(f"JobConfig.training_config must be a TrainingConfig or a dict, got {type(self.training_config).__name__}")
        if not isinstance(self.num_workers, int) or isinstance(self.num_workers, bool) or self.num_workers < 1:
            raise ValueError(f"JobConfig.num_workers={self.num_workers!r} must be an integer >= 1")
        for name in ("priority", "max_retries"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or (name == "max_retries" and value < 0):
                raise ValueError(f"JobConfig.{name}={value!r} must be an integer{' >= 0' if name == 'max_retries' else ''}")
        if self.training_config.parallelism == "fsdp" and self.num_workers == 1:
            raise ValueError("JobConfig.training_config.parallelism='fsdp' shards the model across workers: set num_workers >= 2, or parallelism='ddp'")


def _job_storage(given: str | os.PathLike | None, engine: Any) -> str:
    """Where the jobs' checkpoints go: `given`, else $TRAINYARD_STORAGE/jobs, else beside a
    SQLite file. A job's log and its in-process checkpoints are files on a filesystem that the
    queue's processes share (a local disk, NFS); object storage is refused, saying so."""
    location = given or (join(os.environ[STORAGE_VARIABLE].strip(), "jobs") if os.environ.get(STORAGE_VARIABLE, "").strip() else None)
    if location is not None and is_uri(location):
        raise ValueError(
            f"storage {os.fspath(location)}: the job queue keeps each job's log and checkpoints on a filesystem its processes "
            "share (a local disk or NFS); give such a path (--storage, storage_path=). `trainyard train --workers N --storage "
            f"{os.fspath(location)}` trains into object storage"
        )
    return str(Path(location or default_storage(engine)).expanduser().resolve())


class JobQueue:
    def __init__(self, url: str = "sqlite:///training_jobs.db", storage_path: str | os.PathLike | None = None,
                 allow_shared_storage: bool = False):
        """`url`: a SQLAlchemy database URL. `storage_path`: where job checkpoints go
        (default: `$TRAINYARD_STORAGE/jobs`, else beside a SQLite file, `<name>_jobs/`, else
        `runs/jobs`).

        Each job runs as a Ray Job on the cluster in RAY_ADDRESS (else a `ray start` head on
        this machine, else one the queue starts here and says so), so it outlives the
        process that submitted it. The queue's admission actor on that cluster starts pending
        jobs when there is room, by priority then submission.

        Jobs and results are stored as pickles, so the database is trusted code: a new
        SQLite file is created owner-only, and one that another user owns or can write is
        refused when a pickle is read from it, unless `allow_shared_storage=True` (or
        TRAINYARD_ALLOW_SHARED_STORAGE=1) says everyone who can write it is trusted. On a
        database server, its credentials are the boundary."""
        show_logs()
        self.url = absolute_sqlite(url)  # the jobs' processes have other working directories
        self._engine, self._table, self._settings = open_table(self.url, with_settings=True)
        self.storage_path = _job_storage(storage_path, self._engine)
        self.allow_shared_storage = bool(allow_shared_storage)
        self._client = None
        self._failed_at = -float("inf")  # when this object last failed to start the admission actor

    # -- submitting and controlling ------------------------------------------------------

    def submit_job(self, job_config: JobConfig) -> str:
        """Record the job as pending and make sure the cluster's admission actor will start
        it; returns its id at once. The job runs on when this process exits."""
        if not isinstance(job_config, JobConfig):
            raise TypeError(f"submit_job takes a JobConfig, got {type(job_config).__name__}")
        try:
            payload = dumps(job_config)
        except Exception as e:  # noqa: BLE001 - any pickling failure
            raise TypeError(f"the job cannot be stored: {type(e).__name__}: {e}. Keep open files, locks and connections out of it") from e
        self._ensure_admitter(start_head=True)  # first: a job is recorded only once it can be launched
        self._check_fits(job_config)
        job_id = uuid.uuid4().hex[:12]
        make_private_dir(Path(self.storage_path))
        with self._engine.begin() as c:
            c.execute(self._table.insert().values(
                id=job_id, name=job_config.name, state="pending", submitted_at=time.time(), attempts=1,
                checkpoint_dir=str(Path(self.storage_path) / job_id), owner=job_config.owner or user(), payload=payload,
                priority=job_config.priority, num_workers=job_config.num_workers, use_gpu=int(job_config.use_gpu),
                max_retries=job_config.max_retries, retries=0,
            ))
        self._ensure_admitter(quietly=True)  # it may have left (idle) since the look above; the job is recorded either way
        log.info("job %s submitted%s", job_id, f" ({job_config.name})" if job_config.name else "")
        return job_id

    def resume_job(self, job_id: str) -> None:
        """Queue a cancelled, failed or interrupted job again, to continue from its last
        checkpoint."""
        record = self.get_job(job_id)
        if record.state not in ("cancelled", "failed", "interrupted"):
            raise ValueError(f"job {job_id} is {record.state}; only cancelled, failed or interrupted jobs can be resumed")
        row = self._row(job_id)
        # the driver will unpickle it: the trust check here, where the user can act on it
        check_private(database_files(self._engine), "the job queue's database", allow=self.allow_shared_storage)
        self._ensure_admitter(start_head=True)
        t = self._table
        with self._engine.begin() as c:  # only from the row just read: two resumes queue it once
            claimed = c.execute(t.update().where(
                (t.c.id == job_id) & (t.c.attempts == record.attempts) & (t.c.state == row["state"])
            ).values(state="pending", error=None, finished_at=None, started_at=None, attempts=record.attempts + 1,
                     ray_job=None, reason=None, launched_at=None)).rowcount
        if not claimed:
            raise RuntimeError(f"job {job_id} changed while it was being resumed (another process resumed or launched it); queue.get_job({job_id!r}) shows it now")
        self._ensure_admitter(quietly=True)

    def cancel_job(self, job_id: str) -> bool:
        """Stop a pending or running job (a running one saves a checkpoint first, so
        `resume_job` continues it). False if it had already finished."""
        if self.get_job_status(job_id) not in ("pending", "running"):
            return False
        with self._engine.begin() as c:
            changed = c.execute(self._table.update().where(
                (self._table.c.id == job_id) & self._table.c.state.in_(("pending", "running"))
            ).values(state="cancelled", finished_at=time.time())).rowcount
        return bool(changed)

    def set_max_running(self, limit: int | None) -> None:
        """At most `limit` jobs of this queue run at once (None: as many as the cluster
        fits; 0 holds every pending job)."""
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
            raise ValueError(f"max_running={limit!r} must be an integer >= 0, or None for no limit")
        write_setting(self._engine, self._settings, "max_running", None if limit is None else str(limit))

    # -- reading -------------------------------------------------------------------------

    def get_job(self, job_id: str) -> JobRecord:
        row = self._row(job_id)
        if row["state"] in ("pending", "running"):
            self._ensure_admitter(quietly=True)
            if row["state"] == "pending":
                row["position"] = next((i for i, r in enumerate(self._pending(), 1) if r["id"] == job_id), None)
        return to_record(row)

    def get_job_status(self, job_id: str) -> str:
        """One of JOB_STATES."""
        return self.get_job(job_id).state

    def get_job_results(self, job_id: str) -> dict[str, Any]:
        """The results dict of a completed job."""
        record = self.get_job(job_id)
        if record.state != "completed":
            detail = f": {record.error.strip().splitlines()[-1]}" if record.error else ""
            raise RuntimeError(f"job {job_id} is {record.state}{detail}; results exist only for completed jobs (see queue.wait)")
        return self._unpickle(self._row(job_id)["results"], pickle.loads)

    def list_jobs(self, state: str | None = None, owner: str | None = None) -> list[JobRecord]:
        """The jobs, oldest first (a pending one with its `position` in the queue)."""
        if state is not None and state not in JOB_STATES:
            raise ValueError(f"state={state!r} must be one of {list(JOB_STATES)}")
        t = self._table
        with self._engine.connect() as c:
            rows = [dict(r) for r in c.execute(t.select().order_by(t.c.submitted_at)).mappings()]
        if any(r["state"] in ("pending", "running") for r in rows):
            self._ensure_admitter(quietly=True)
        positions = {r["id"]: i for i, r in enumerate(_in_queue_order(rows), 1)}
        records = [to_record({**r, "position": positions.get(r["id"])}) for r in rows]
        return [r for r in records if (state is None or r.state == state) and (owner is None or r.owner == owner)]

    def wait(self, job_id: str, timeout: float | None = None, poll: float = 0.2) -> str:
        """Block until the job is completed, failed, cancelled or interrupted; its state.
        A cancelled job is waited for until its process has ended (it saves its checkpoint
        first), so `resume_job` may follow at once."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            state = self.get_job_status(job_id)
            if state in (*FINISHED, "interrupted") and not self._still_stopping(job_id):
                return state
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {state} after {timeout} s")
            time.sleep(poll)

    def ray_job_logs(self, job_id: str) -> str | None:
        """What the Ray Job of the job's current (or last) attempt logged, from Ray (less Ray's
        own lines about starting it); None when the cluster no longer knows it (the job's own
        log file keeps every attempt's lines)."""
        ray_job = self._row(job_id)["ray_job"]
        if not ray_job:
            return None
        try:
            text = self._jobs(start_head=False).get_job_logs(ray_job)
        except Exception:  # noqa: BLE001 - not on this cluster (restarted), or no cluster
            return None
        return "".join(line for line in text.splitlines(keepends=True) if not _RAY_JOB_NOISE.search(line))

    # -- internals -----------------------------------------------------------------------

    def _row(self, job_id: str) -> dict[str, Any]:
        with self._engine.connect() as c:
            row = c.execute(self._table.select().where(self._table.c.id == job_id)).mappings().first()
        if row is None:
            raise KeyError(f"no job {job_id!r} in {self.url}; queue.list_jobs() lists the jobs there")
        return dict(row)

    def _pending(self) -> list[dict[str, Any]]:
        t = self._table
        with self._engine.connect() as c:
            rows = c.execute(t.select().with_only_columns(t.c.id, t.c.state, t.c.priority, t.c.submitted_at, t.c.ray_job)
                             .where(t.c.state == "pending")).mappings().all()
        return _in_queue_order([dict(r) for r in rows])

    def _still_stopping(self, job_id: str) -> bool:
        """A cancelled job whose process has not ended yet (it is saving its position)."""
        row = self._row(job_id)
        if row["state"] != "cancelled" or not row["ray_job"]:
            return False
        try:
            status = str(self._jobs(start_head=False).get_job_info(row["ray_job"]).status)
        except Exception:  # noqa: BLE001 - no cluster, or it no longer knows the job
            return False
        return status in ("PENDING", "RUNNING") and time.time() - (row["finished_at"] or 0) < 120

    def _unpickle(self, data: bytes, load=loads) -> Any:
        """A pickle from the database, once the database is known to be the user's own."""
        check_private(database_files(self._engine), "the job queue's database", allow=self.allow_shared_storage)
        return load(data)  # noqa: S301 - from a database only this user can write

    def _jobs(self, start_head: bool = True):
        if self._client is None:
            address = dashboard_address(start=start_head)
            if address is None:
                raise ConnectionError("no Ray cluster is running")
            self._client = jobs_client(address)
        return self._client

    def _admitter_beating(self) -> bool:
        return read_setting(self._engine, self._settings, "admitter", fresh_within=ADMITTER_FRESH_S) is not None

    def _ensure_admitter(self, start_head: bool = False, quietly: bool = False) -> None:
        """The cluster's admission actor for this database is beating, or is started by a
        short Ray Job (`python -m trainyard.job_queue.admission`), waited for until it beats.
        Many threads and processes at once: one of them (holding the database's "bootstrap"
        lease) starts it, the others wait for its beat. `quietly`: a reader's look, which
        never starts a head and gives up in silence."""
        if quietly and time.monotonic() - self._failed_at < QUIET_RETRY_S:
            return  # a reader does not submit a bootstrap Ray Job at every look while they fail
        try:
            with _BOOTSTRAPPING:
                self._start_admitter(start_head)
        except Exception:
            self._failed_at = time.monotonic()
            if not quietly:
                raise

    def _start_admitter(self, start_head: bool) -> None:
        deadline = time.monotonic() + BOOTSTRAP_S
        while not self._admitter_beating():
            submission_id = f"{admitter_name(self.url)}-{uuid.uuid4().hex[:6]}"
            if claim_setting(self._engine, self._settings, "bootstrap", submission_id, stale_s=BOOTSTRAP_S):
                argv = [self.url, self.storage_path, "1" if self.allow_shared_storage else "0"]
                try:
                    start_and_wait(self._jobs(start_head=start_head), f"python -m trainyard.job_queue.admission {shlex.join(argv)}",
                                   submission_id, self._admitter_beating, "the job queue's admission actor", timeout=BOOTSTRAP_S)
                finally:
                    write_setting(self._engine, self._settings, "bootstrap", None, at=0.0)  # released
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the job queue's admission actor did not start within {BOOTSTRAP_S:.0f} s (another process was starting it)")
            time.sleep(0.2)

    def _check_fits(self, job: JobConfig) -> None:
        """Refuse a job the cluster can never run (as its admitter last saw the nodes)."""
        seen = read_setting(self._engine, self._settings, "admitter")
        cluster = json.loads(seen) if seen else {}
        if cluster.get("autoscaling") or not cluster.get("nodes"):
            return
        problem = unsatisfiable({"CPU": 1, "GPU": 1 if job.use_gpu else 0}, job.num_workers, cluster["nodes"],
                                f"JobConfig(num_workers={job.num_workers}{', use_gpu=True' if job.use_gpu else ''})",
                                "Use fewer workers, use_gpu=False, or add nodes to the cluster.")
        if problem is not None:
            raise ValueError(problem)


_RAY_JOB_NOISE = re.compile(r"^\S+ \S+\s+INFO job_manager\.py:\d+ -- |^Running entrypoint for job ")


def _in_queue_order(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pending jobs not yet launched, in the order the admitter starts them."""
    return queue_order([r for r in rows if r["state"] == "pending" and not r.get("ray_job")])
