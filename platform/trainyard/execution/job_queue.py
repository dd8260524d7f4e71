"""A durable job queue: job records in a SQL database, the jobs themselves run on Ray.

    queue = JobQueue("sqlite:///training_jobs.db")        # or any SQLAlchemy URL (PostgreSQL)
    job_id = queue.submit_job(JobConfig(model_factory=..., config=..., train_data=..., training_config=...))
    queue.wait(job_id)                                      # or poll queue.get_job_status(job_id)
    results = queue.get_job_results(job_id)                 # the engine's results dict

Each job runs as a Ray task (a Ray Train run inside it when `num_workers > 1`) that writes
its own state, a heartbeat and finally its results to the database, so any process that
opens the same URL sees them. Every job checkpoints into its own directory; a job that was
cancelled, failed or interrupted (its submitting process died) continues from its last
checkpoint with `resume_job`. SQLite is one machine's file: jobs of a SQLite queue are
pinned to the submitting node; use a server database for a queue shared across nodes.
"""

from __future__ import annotations

import os
import pickle
import socket
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainyard._logging import get_logger
from trainyard.engine.config import TrainingConfig
from trainyard.engine.hooks import TrainingHooks

log = get_logger("trainyard.execution")

JOB_STATES = ("pending", "running", "completed", "failed", "cancelled", "interrupted")
_FINISHED = ("completed", "failed", "cancelled")
HEARTBEAT_S = 2.0  # a running job touches its record this often
STALE_S = 60.0  # a running job silent this long is reported interrupted
_TABLE = "trainyard_jobs"


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


@dataclass(frozen=True)
class JobRecord:
    id: str
    name: str | None
    state: str  # one of JOB_STATES
    submitted_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int
    error: str | None
    checkpoint_dir: str
    checkpoint_path: str | None  # the last checkpoint written (completed jobs)


class JobQueue:
    def __init__(self, url: str = "sqlite:///training_jobs.db", storage_path: str | os.PathLike | None = None):
        """`url`: a SQLAlchemy database URL. `storage_path`: where job checkpoints go
        (default: beside a SQLite file, `<name>_jobs/`; else `runs/jobs`)."""
        self.url = _absolute_sqlite(url)  # the jobs' processes have other working directories
        self._engine, self._table = _open(self.url)
        self.storage_path = str(Path(storage_path or _default_storage(self._engine)).expanduser().resolve())
        self._refs: dict[str, Any] = {}  # jobs this object launched: job id -> ObjectRef

    # -- submitting and controlling ------------------------------------------------------

    def submit_job(self, job_config: JobConfig) -> str:
        """Record the job and launch it on Ray; returns its id at once."""
        if not isinstance(job_config, JobConfig):
            raise TypeError(f"submit_job takes a JobConfig, got {type(job_config).__name__}")
        from ray import cloudpickle

        try:
            payload = cloudpickle.dumps(job_config)
        except Exception as e:  # noqa: BLE001 - any pickling failure
            raise TypeError(f"the job cannot be stored: {type(e).__name__}: {e}. Keep open files, locks and connections out of it") from e
        job_id = uuid.uuid4().hex[:12]
        checkpoint_dir = str(Path(self.storage_path) / job_id)
        with self._engine.begin() as c:
            c.execute(self._table.insert().values(
                id=job_id, name=job_config.name, state="pending", submitted_at=time.time(), attempts=1,
                checkpoint_dir=checkpoint_dir, owner=_owner(), payload=payload,
            ))
        self._launch(job_id, job_config, payload)
        log.info("job %s submitted%s", job_id, f" ({job_config.name})" if job_config.name else "")
        return job_id

    def resume_job(self, job_id: str) -> None:
        """Run a cancelled, failed or interrupted job again, from its last checkpoint."""
        record = self.get_job(job_id)
        if record.state not in ("cancelled", "failed", "interrupted"):
            raise ValueError(f"job {job_id} is {record.state}; only cancelled, failed or interrupted jobs can be resumed")
        from ray import cloudpickle

        payload = self._row(job_id)["payload"]
        with self._engine.begin() as c:
            c.execute(self._table.update().where(self._table.c.id == job_id).values(
                state="pending", error=None, finished_at=None, attempts=record.attempts + 1, owner=_owner(),
            ))
        self._launch(job_id, cloudpickle.loads(payload), payload)

    def cancel_job(self, job_id: str) -> bool:
        """Stop a pending or running job (a running one saves a checkpoint first, so
        `resume_job` continues it). False if it had already finished."""
        if self.get_job_status(job_id) not in ("pending", "running"):
            return False
        with self._engine.begin() as c:
            changed = c.execute(self._table.update().where(
                (self._table.c.id == job_id) & self._table.c.state.in_(("pending", "running"))
            ).values(state="cancelled", finished_at=time.time())).rowcount
        ref = self._refs.get(job_id)
        if changed and ref is not None and self._row(job_id)["started_at"] is None:
            import ray

            ray.cancel(ref)  # not started: drop it from Ray's queue
        return bool(changed)

    # -- reading -------------------------------------------------------------------------

    def get_job(self, job_id: str) -> JobRecord:
        self._reconcile(job_id)
        return _record(self._row(job_id))

    def get_job_status(self, job_id: str) -> str:
        """One of JOB_STATES."""
        return self.get_job(job_id).state

    def get_job_results(self, job_id: str) -> dict[str, Any]:
        """The results dict of a completed job."""
        record = self.get_job(job_id)
        if record.state != "completed":
            detail = f": {record.error.strip().splitlines()[-1]}" if record.error else ""
            raise RuntimeError(f"job {job_id} is {record.state}{detail}; results exist only for completed jobs (see queue.wait)")
        return pickle.loads(self._row(job_id)["results"])  # noqa: S301 - written by this queue's own jobs

    def list_jobs(self, state: str | None = None) -> list[JobRecord]:
        if state is not None and state not in JOB_STATES:
            raise ValueError(f"state={state!r} must be one of {list(JOB_STATES)}")
        for job_id in list(self._refs):
            self._reconcile(job_id)
        with self._engine.connect() as c:
            rows = c.execute(self._table.select().order_by(self._table.c.submitted_at)).mappings().all()
        records = [_record(dict(row)) for row in rows]
        return [r for r in records if state is None or r.state == state]

    def wait(self, job_id: str, timeout: float | None = None, poll: float = 0.2) -> str:
        """Block until the job is completed, failed, cancelled or interrupted; its state."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            state = self.get_job_status(job_id)
            if state in (*_FINISHED, "interrupted"):
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

    def _reconcile(self, job_id: str) -> None:
        """A job task launched here that ended without recording its end (it could not
        even start, e.g. its payload failed to unpickle there) is failed, with Ray's error."""
        ref = self._refs.get(job_id)
        if ref is None:
            return
        import ray

        ready, _ = ray.wait([ref], timeout=0)
        if not ready:
            return
        del self._refs[job_id]
        try:
            ray.get(ref)
        except ray.exceptions.TaskCancelledError:
            return
        except Exception as e:  # noqa: BLE001 - whatever ended the task is the job's error
            with self._engine.begin() as c:
                c.execute(self._table.update().where(
                    (self._table.c.id == job_id) & self._table.c.state.in_(("pending", "running"))
                ).values(state="failed", finished_at=time.time(), error=f"{type(e).__name__}: {e}"))

    def _launch(self, job_id: str, job_config: JobConfig, payload: bytes) -> None:
        import ray

        from trainyard.execution.ray_env import ensure_ray

        ensure_ray()
        options: dict[str, Any] = {"num_cpus": 1, "num_gpus": 1 if job_config.use_gpu and job_config.num_workers == 1 else 0, "max_retries": 0}
        if self._engine.dialect.name == "sqlite":  # the database file is on this node
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self._refs[job_id] = ray.remote(_run_job).options(**options).remote(self.url, job_id, payload, self.storage_path)


# -- the job, in its Ray task ------------------------------------------------------------


def _run_job(url: str, job_id: str, payload: bytes, storage_path: str) -> None:
    from ray import cloudpickle

    from trainyard.engine.checkpoint import latest_valid
    from trainyard.engine.trainer import Trainer

    engine, table = _open(url)
    with engine.begin() as c:
        started = c.execute(table.update().where((table.c.id == job_id) & (table.c.state == "pending")).values(
            state="running", started_at=time.time(), heartbeat_at=time.time(),
        )).rowcount
    if not started:  # cancelled before it began
        return
    watch = _Watch(engine, table, job_id)
    watch.start()
    try:
        job: JobConfig = cloudpickle.loads(payload)
        checkpoint_dir = job.training_config.checkpoint_dir or str(Path(storage_path) / job_id)
        training_config = job.training_config.replace(checkpoint_dir=checkpoint_dir)
        if job.num_workers > 1:
            import ray.train

            trainer = Trainer(
                job.model_factory, job.config, training_config.replace(checkpoint_dir=None), job.task_spec, hooks=list(job.hooks),
                scaling=ray.train.ScalingConfig(num_workers=job.num_workers, use_gpu=job.use_gpu),
                run_config=ray.train.RunConfig(name=job_id, storage_path=storage_path),  # a rerun resumes it
            )
            results = trainer.train(job.train_data, job.val_data)
        else:
            resume = checkpoint_dir if latest_valid(Path(checkpoint_dir)) is not None else None
            hooks = [*job.hooks, _StopWhenCancelled(watch)]  # in this process, where the watch runs
            trainer = Trainer(job.model_factory, job.config, training_config, job.task_spec, hooks=hooks)
            results = trainer.train(job.train_data, job.val_data, resume_from=resume)
        if watch.cancelled:
            return
        _finish(engine, table, job_id, state="completed", results=pickle.dumps(results), checkpoint_path=results.get("checkpoint_path"))
    except BaseException:
        _finish(engine, table, job_id, state="failed", error=traceback.format_exc())
        raise
    finally:
        watch.stop()


def _finish(engine, table, job_id: str, **values: Any) -> None:
    with engine.begin() as c:  # a cancelled record stays cancelled
        c.execute(table.update().where((table.c.id == job_id) & (table.c.state == "running")).values(finished_at=time.time(), **values))


class _Watch(threading.Thread):
    """Touches the record's heartbeat and notices a cancellation from any process."""

    def __init__(self, engine, table, job_id: str):
        super().__init__(daemon=True, name=f"trainyard-job-{job_id}")
        self.engine, self.table, self.job_id = engine, table, job_id
        self.cancelled = False
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(HEARTBEAT_S):
            with self.engine.begin() as c:
                c.execute(self.table.update().where(self.table.c.id == self.job_id).values(heartbeat_at=time.time()))
                state = c.execute(self.table.select().with_only_columns(self.table.c.state).where(self.table.c.id == self.job_id)).scalar()
            if state == "cancelled":
                self.cancelled = True

    def stop(self) -> None:
        self._stop_event.set()


class _StopWhenCancelled(TrainingHooks):
    def __init__(self, watch: _Watch):
        self.watch = watch

    def on_batch_end(self, trainer, batch, outputs) -> None:
        if self.watch.cancelled and not trainer.stop_requested:
            trainer.request_stop("the job was cancelled")


# -- the database ------------------------------------------------------------------------


def _open(url: str):
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(url, connect_args={"timeout": 30} if url.startswith("sqlite") else {})
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError) as e:
        raise ValueError(f"JobQueue url {url!r} is not a usable SQLAlchemy URL ({e}); e.g. sqlite:///training_jobs.db or postgresql://host/db") from None
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        if database and database != ":memory:":
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        else:
            raise ValueError(f"JobQueue url {url!r}: an in-memory SQLite database is private to one process; give a file, e.g. sqlite:///training_jobs.db")
        sa.event.listen(engine, "connect", _sqlite_wal)
    meta = sa.MetaData()
    table = sa.Table(
        _TABLE, meta,
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200)),
        sa.Column("state", sa.String(16), nullable=False, index=True),
        sa.Column("submitted_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float),
        sa.Column("finished_at", sa.Float),
        sa.Column("heartbeat_at", sa.Float),
        sa.Column("attempts", sa.Integer, nullable=False, default=1),
        sa.Column("owner", sa.String(300)),  # host:pid of the process that launched it
        sa.Column("error", sa.Text),
        sa.Column("checkpoint_dir", sa.Text, nullable=False),
        sa.Column("checkpoint_path", sa.Text),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("results", sa.LargeBinary),
    )
    try:
        meta.create_all(engine)
    except sa.exc.OperationalError as e:
        raise ValueError(f"JobQueue cannot open {url!r}: {e.orig}") from None
    return engine, table


def _absolute_sqlite(url: str) -> str:
    import sqlalchemy as sa

    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        return url  # _open reports it
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        return parsed.set(database=str(Path(parsed.database).expanduser().resolve())).render_as_string(hide_password=False)
    return url


def _sqlite_wal(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the jobs' writes
    cursor.close()


def _default_storage(engine: Any) -> Path:
    if engine.dialect.name == "sqlite":
        database = Path(engine.url.database).expanduser()
        return database.parent / f"{database.stem}_jobs"
    return Path("runs") / "jobs"


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _record(row: dict[str, Any]) -> JobRecord:
    return JobRecord(
        id=row["id"], name=row["name"], state=_observed_state(row), submitted_at=row["submitted_at"],
        started_at=row["started_at"], finished_at=row["finished_at"], attempts=row["attempts"],
        error=row["error"], checkpoint_dir=row["checkpoint_dir"], checkpoint_path=row["checkpoint_path"],
    )


def _observed_state(row: dict[str, Any]) -> str:
    """The stored state, or 'interrupted' for a pending/running job nobody runs any more."""
    state = row["state"]
    if state not in ("pending", "running"):
        return state
    host, _, pid = (row["owner"] or "").rpartition(":")
    if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
        return "interrupted"  # its launching process (and with it, the Ray task) is gone
    if state == "running" and row["heartbeat_at"] is not None and time.time() - row["heartbeat_at"] > STALE_S:
        return "interrupted"
    return state


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

