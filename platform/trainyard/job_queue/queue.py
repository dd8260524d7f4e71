"""The job queue's API: submit, control and read jobs; the jobs themselves run on Ray."""

from __future__ import annotations

import os
import pickle
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainyard._logging import get_logger, show_logs
from trainyard._trust import check_private, make_private_dir
from trainyard.engine.config import TrainingConfig
from trainyard.execution.ray_env import check_satisfiable, ensure_ray
from trainyard.execution.remote import dumps, loads
from trainyard.execution.tasks import RemoteTask, start_task
from trainyard.job_queue.records import (
    FINISHED,
    JOB_STATES,
    JobRecord,
    absolute_sqlite,
    database_files,
    default_storage,
    open_table,
    owner,
    to_record,
)
from trainyard.job_queue.runner import run_job
from trainyard.storage import STORAGE_VARIABLE, is_uri, join

log = get_logger("trainyard.job_queue")


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

        Jobs and results are stored as pickles, so the database is trusted code: a new
        SQLite file is created owner-only, and one that another user owns or can write is
        refused when a pickle is read from it, unless `allow_shared_storage=True` (or
        TRAINYARD_ALLOW_SHARED_STORAGE=1) says everyone who can write it is trusted. On a
        database server, its credentials are the boundary."""
        show_logs()
        self.url = absolute_sqlite(url)  # the jobs' processes have other working directories
        self._engine, self._table = open_table(self.url)
        self.storage_path = _job_storage(storage_path, self._engine)
        self.allow_shared_storage = bool(allow_shared_storage)
        self._tasks: dict[str, tuple[RemoteTask, int]] = {}  # jobs this object launched, and which attempt

    # -- submitting and controlling ------------------------------------------------------

    def submit_job(self, job_config: JobConfig) -> str:
        """Record the job and launch it on Ray; returns its id at once."""
        if not isinstance(job_config, JobConfig):
            raise TypeError(f"submit_job takes a JobConfig, got {type(job_config).__name__}")
        try:
            payload = dumps(job_config)
        except Exception as e:  # noqa: BLE001 - any pickling failure
            raise TypeError(f"the job cannot be stored: {type(e).__name__}: {e}. Keep open files, locks and connections out of it") from e
        ensure_ray()  # first: a job is recorded only once it can be launched
        check_satisfiable(
            {"CPU": 1, "GPU": 1 if job_config.use_gpu else 0}, job_config.num_workers,
            f"JobConfig(num_workers={job_config.num_workers}{', use_gpu=True' if job_config.use_gpu else ''})",
            "Use fewer workers, use_gpu=False, or add nodes to the cluster.",
        )
        job_id = uuid.uuid4().hex[:12]
        checkpoint_dir = str(Path(self.storage_path) / job_id)
        with self._engine.begin() as c:
            c.execute(self._table.insert().values(
                id=job_id, name=job_config.name, state="pending", submitted_at=time.time(), attempts=1,
                checkpoint_dir=checkpoint_dir, owner=owner(), payload=payload,
            ))
        try:
            self._launch(job_id, 1, job_config, payload)
        except BaseException:  # the caller gets no id: leave no row that reads as a job
            with self._engine.begin() as c:
                c.execute(self._table.delete().where(self._table.c.id == job_id))
            raise
        log.info("job %s submitted%s", job_id, f" ({job_config.name})" if job_config.name else "")
        return job_id

    def resume_job(self, job_id: str) -> None:
        """Run a cancelled, failed or interrupted job again, from its last checkpoint."""
        record = self.get_job(job_id)
        if record.state not in ("cancelled", "failed", "interrupted"):
            raise ValueError(f"job {job_id} is {record.state}; only cancelled, failed or interrupted jobs can be resumed")
        row = self._row(job_id)
        payload, before = row["payload"], {k: row[k] for k in ("state", "error", "finished_at", "attempts", "owner")}
        job_config = self._unpickle(payload)
        ensure_ray()
        attempt, t = record.attempts + 1, self._table
        with self._engine.begin() as c:  # only from the row just read: two resumes launch once
            claimed = c.execute(t.update().where(
                (t.c.id == job_id) & (t.c.attempts == record.attempts) & (t.c.state == row["state"])
            ).values(state="pending", error=None, finished_at=None, attempts=attempt, owner=owner())).rowcount
        if not claimed:
            raise RuntimeError(f"job {job_id} changed while it was being resumed (another process resumed or launched it); queue.get_job({job_id!r}) shows it now")
        try:
            self._launch(job_id, attempt, job_config, payload)
        except BaseException:  # not relaunched: it is as it was
            with self._engine.begin() as c:
                c.execute(t.update().where((t.c.id == job_id) & (t.c.attempts == attempt)).values(**before))
            raise

    def cancel_job(self, job_id: str) -> bool:
        """Stop a pending or running job (a running one saves a checkpoint first, so
        `resume_job` continues it). False if it had already finished."""
        if self.get_job_status(job_id) not in ("pending", "running"):
            return False
        with self._engine.begin() as c:
            changed = c.execute(self._table.update().where(
                (self._table.c.id == job_id) & self._table.c.state.in_(("pending", "running"))
            ).values(state="cancelled", finished_at=time.time())).rowcount
        task, _ = self._tasks.get(job_id, (None, None))
        if changed and task is not None and self._row(job_id)["started_at"] is None:
            task.cancel()  # not started: drop it from Ray's queue
        return bool(changed)

    # -- reading -------------------------------------------------------------------------

    def get_job(self, job_id: str) -> JobRecord:
        self._reconcile(job_id)
        return to_record(self._row(job_id))

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

    def list_jobs(self, state: str | None = None) -> list[JobRecord]:
        if state is not None and state not in JOB_STATES:
            raise ValueError(f"state={state!r} must be one of {list(JOB_STATES)}")
        for job_id in list(self._tasks):
            self._reconcile(job_id)
        with self._engine.connect() as c:
            rows = c.execute(self._table.select().order_by(self._table.c.submitted_at)).mappings().all()
        records = [to_record(dict(row)) for row in rows]
        return [r for r in records if state is None or r.state == state]

    def wait(self, job_id: str, timeout: float | None = None, poll: float = 0.2) -> str:
        """Block until the job is completed, failed, cancelled or interrupted; its state.
        For a job this queue launched, also until its process has ended: a cancelled job
        saves its checkpoint first, which it cannot do once this process exits."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            state = self.get_job_status(job_id)
            if state in (*FINISHED, "interrupted"):
                task, _ = self._tasks.get(job_id, (None, None))
                if task is not None:
                    task.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
                return state
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {state} after {timeout} s")
            time.sleep(poll)

    # -- internals -----------------------------------------------------------------------

    def _row(self, job_id: str) -> dict[str, Any]:
        with self._engine.connect() as c:
            row = c.execute(self._table.select().where(self._table.c.id == job_id)).mappings().first()
        if row is None:
            raise KeyError(f"no job {job_id!r} in {self.url}; queue.list_jobs() lists the jobs there")
        return dict(row)

    def _unpickle(self, data: bytes, load=loads) -> Any:
        """A pickle from the database, once the database is known to be the user's own."""
        check_private(database_files(self._engine), "the job queue's database", allow=self.allow_shared_storage)
        return load(data)  # noqa: S301 - from a database only this user can write

    def _reconcile(self, job_id: str) -> None:
        """A job task launched here that ended without recording its end (it could not
        even start, e.g. its payload failed to unpickle there) is failed, with Ray's error."""
        task, attempt = self._tasks.get(job_id, (None, None))
        if task is None or not task.done():
            return
        del self._tasks[job_id]
        error = task.failure()
        if error is not None:
            t = self._table
            with self._engine.begin() as c:
                c.execute(t.update().where(
                    (t.c.id == job_id) & (t.c.attempts == attempt) & t.c.state.in_(("pending", "running"))
                ).values(state="failed", finished_at=time.time(), error=error))

    def _launch(self, job_id: str, attempt: int, job_config: JobConfig, payload: bytes) -> None:
        make_private_dir(Path(self.storage_path))
        self._tasks[job_id] = start_task(
            run_job, self.url, job_id, attempt, payload, self.storage_path, self.allow_shared_storage,
            num_cpus=1, num_gpus=1 if job_config.use_gpu and job_config.num_workers == 1 else 0,
            on_this_node=self._engine.dialect.name == "sqlite",  # the database file is on this node
        ), attempt
