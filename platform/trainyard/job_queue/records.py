"""The job queue's database: one SQL table of job records (SQLite or any SQLAlchemy URL)."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

JOB_STATES = ("pending", "running", "completed", "failed", "cancelled", "interrupted")
FINISHED = ("completed", "failed", "cancelled")
HEARTBEAT_S = 2.0  # a running job touches its record this often
STALE_S = 60.0  # a running job silent this long is reported interrupted
TABLE = "trainyard_jobs"


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


def open_table(url: str):
    """(SQLAlchemy engine, the jobs table), created if it does not exist."""
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
        TABLE, meta,
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
    for attempt in range(5):
        try:
            meta.create_all(engine)  # checks first, then creates: two processes can both decide to create
            break
        except (sa.exc.OperationalError, sa.exc.ProgrammingError, sa.exc.IntegrityError) as e:
            if "already exists" in str(e.orig) or isinstance(e, sa.exc.IntegrityError):  # the other one won: look again
                time.sleep(0.05 * (attempt + 1))
                continue
            raise ValueError(f"JobQueue cannot open {url!r}: {e.orig}") from None
    return engine, table


def absolute_sqlite(url: str) -> str:
    """A SQLite URL with an absolute file path (the jobs' processes run elsewhere)."""
    import sqlalchemy as sa

    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        return url  # open_table reports it
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        return parsed.set(database=str(Path(parsed.database).expanduser().resolve())).render_as_string(hide_password=False)
    return url


def _sqlite_wal(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the jobs' writes
    cursor.close()


def default_storage(engine: Any) -> Path:
    """Where job checkpoints go: beside a SQLite file (`<name>_jobs/`), else `runs/jobs`."""
    if engine.dialect.name == "sqlite":
        database = Path(engine.url.database).expanduser()
        return database.parent / f"{database.stem}_jobs"
    return Path("runs") / "jobs"


def owner() -> str:
    """host:pid of this process, the launcher of the jobs it submits."""
    return f"{socket.gethostname()}:{os.getpid()}"


def to_record(row: dict[str, Any]) -> JobRecord:
    return JobRecord(
        id=row["id"], name=row["name"], state=observed_state(row), submitted_at=row["submitted_at"],
        started_at=row["started_at"], finished_at=row["finished_at"], attempts=row["attempts"],
        error=row["error"], checkpoint_dir=row["checkpoint_dir"], checkpoint_path=row["checkpoint_path"],
    )


def observed_state(row: dict[str, Any]) -> str:
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


def finish(engine, table, job_id: str, **values: Any) -> None:
    """Record a running job's end (a cancelled record stays cancelled)."""
    with engine.begin() as c:
        c.execute(table.update().where((table.c.id == job_id) & (table.c.state == "running")).values(finished_at=time.time(), **values))
