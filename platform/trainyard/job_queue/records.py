"""The job queue's database: one SQL table of job records (SQLite or any SQLAlchemy URL)."""

from __future__ import annotations

import importlib.util
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainyard._trust import make_private_dir, make_private_file

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

    url = _with_driver(url)
    try:
        engine = sa.create_engine(url, connect_args={"timeout": 30} if url.startswith("sqlite") else {})
    except ModuleNotFoundError as e:
        extra = " (pip install 'trainyard[postgres]')" if url.startswith("postgres") else ""
        raise ValueError(f"JobQueue url {url!r} needs the database driver {e.name!r}, which is not installed{extra}") from None
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError) as e:
        raise ValueError(f"JobQueue url {url!r} is not a usable SQLAlchemy URL ({e}); e.g. sqlite:///training_jobs.db or postgresql://host/db") from None
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        if database and database != ":memory:":
            file = Path(database).expanduser()
            make_private_dir(file.parent)
            make_private_file(file)  # owner-only: it holds pickles (see trainyard._trust)
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
        sa.Column("worker", sa.String(300)),  # host:pid of the process running it
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
    _add_missing_columns(engine, table)
    return engine, table


def _with_driver(url: str) -> str:
    """`postgresql://` names no driver, and SQLAlchemy then wants psycopg2: use psycopg 3
    (the `postgres` extra) when that is what is installed."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgresql", "postgres") and importlib.util.find_spec("psycopg2") is None and importlib.util.find_spec("psycopg"):
        return f"postgresql+psycopg://{rest}"
    return url


def _add_missing_columns(engine, table) -> None:
    """A database written by an earlier version lacks the newer (nullable) columns: add them,
    keeping every row."""
    import sqlalchemy as sa

    present = {c["name"] for c in sa.inspect(engine).get_columns(TABLE)}
    for column in table.columns:
        if column.name not in present:
            kind = column.type.compile(dialect=engine.dialect)
            try:
                with engine.begin() as c:
                    c.execute(sa.text(f"ALTER TABLE {TABLE} ADD COLUMN {column.name} {kind}"))
            except (sa.exc.OperationalError, sa.exc.ProgrammingError) as e:
                if "duplicate column" not in str(e.orig).lower() and "already exists" not in str(e.orig).lower():
                    raise  # another process added it first otherwise


def database_files(engine) -> list[Path]:
    """The files a SQLite database reads (the trust check looks at each); none for a server."""
    if engine.dialect.name != "sqlite":
        return []
    file = Path(engine.url.database).expanduser()
    return [file, file.with_name(file.name + "-wal"), file.with_name(file.name + "-shm")]


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
    """The stored state, or 'interrupted' for a pending/running job nobody runs any more.

    A job whose launching process died is interrupted (Ray stops the tasks of a dead
    submitter), but not while its own process is still alive: it is still running, and
    resuming it then would put two trainers in one checkpoint directory."""
    state = row["state"]
    if state not in ("pending", "running"):
        return state
    launcher_gone = _gone(row["owner"]) is True
    silent = row["heartbeat_at"] is not None and time.time() - row["heartbeat_at"] > STALE_S
    if not (launcher_gone or (state == "running" and silent)):
        return state
    if state == "running" and not _worker_gone(row):
        return "running"  # being stopped, or wedged: not resumable until its process is gone
    return "interrupted"


def _worker_gone(row: dict[str, Any]) -> bool:
    """The process running the job is known dead: on this host, by its pid; elsewhere, by
    a heartbeat silent for three beats."""
    silence = time.time() - row["heartbeat_at"] if row["heartbeat_at"] is not None else float("inf")
    gone = _gone(row["worker"])
    if gone is not None:
        return gone or silence > STALE_S  # alive but a minute silent: its pid was reused
    return silence > 3 * HEARTBEAT_S + 1


def _gone(who: str | None) -> bool | None:
    """Whether the process `host:pid` has ended; None when that cannot be known here."""
    host, _, pid = (who or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    return not _alive(int(pid))


def _alive(pid: int) -> bool:
    """Whether process `pid` still runs. A zombie (ended, not yet reaped by its parent, as a
    SIGKILLed submitter is until its shell waits for it) has ended."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if not Path("/proc/self").exists():  # no procfs (macOS): signal 0 reached it
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # it ended just now
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")  # the state follows the command's name


def finish(engine, table, job_id: str, attempt: int, **values: Any) -> None:
    """Record a running job's end (a cancelled record stays cancelled; a record launched
    again since belongs to the newer attempt)."""
    with engine.begin() as c:
        c.execute(table.update().where(
            (table.c.id == job_id) & (table.c.state == "running") & (table.c.attempts == attempt)
        ).values(finished_at=time.time(), **values))
