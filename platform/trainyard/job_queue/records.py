"""The job queue's database: one SQL table of job records (SQLite or any SQLAlchemy URL)."""

from __future__ import annotations

import getpass
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
SETTINGS = "trainyard_queue"  # queue-wide values: max_running, the admitter's heartbeat, the cluster's size


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
    owner: str | None = None  # who submitted it (the OS user unless given)
    priority: int = 0  # higher starts first; equal priorities start in submission order
    reason: str | None = None  # why a pending job waits (or how it was last resumed)
    ray_job: str | None = None  # the Ray Job (submission id) running its current attempt
    position: int | None = None  # a pending job's place in the queue, 1 = next to start
    launched_at: float | None = None  # when its current attempt's Ray Job was started


def open_table(url: str, with_settings: bool = False):
    """(SQLAlchemy engine, the jobs table), created if it does not exist; with the
    queue-wide settings table too when `with_settings`."""
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
        sa.Column("owner", sa.String(300)),  # who submitted it (before Ray Jobs: host:pid of the launcher)
        sa.Column("worker", sa.String(300)),  # host:pid of the process running it
        sa.Column("error", sa.Text),
        sa.Column("checkpoint_dir", sa.Text, nullable=False),
        sa.Column("checkpoint_path", sa.Text),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("results", sa.LargeBinary),
        sa.Column("priority", sa.Integer),
        sa.Column("num_workers", sa.Integer),
        sa.Column("use_gpu", sa.Integer),
        sa.Column("max_retries", sa.Integer),
        sa.Column("retries", sa.Integer),  # automatic resumptions so far
        sa.Column("ray_job", sa.String(100)),  # the Ray Job's submission id of the current attempt
        sa.Column("launched_at", sa.Float),  # when the admitter started that Ray Job
        sa.Column("reason", sa.Text),
    )
    settings = sa.Table(
        SETTINGS, meta,
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text),
        sa.Column("updated_at", sa.Float),
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
    return (engine, table, settings) if with_settings else (engine, table)


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


def read_setting(engine, settings, name: str, fresh_within: float | None = None) -> str | None:
    """A queue-wide setting's value (None when unset, or older than `fresh_within` seconds)."""
    with engine.connect() as c:
        row = c.execute(settings.select().where(settings.c.name == name)).first()
    if row is None or (fresh_within is not None and time.time() - (row.updated_at or 0) > fresh_within):
        return None
    return row.value


def write_setting(engine, settings, name: str, value: str | None, at: float | None = None) -> None:
    import sqlalchemy as sa

    values = {"value": value, "updated_at": time.time() if at is None else at}
    with engine.begin() as c:
        if c.execute(settings.update().where(settings.c.name == name).values(**values)).rowcount:
            return
    try:
        with engine.begin() as c:
            c.execute(settings.insert().values(name=name, **values))
    except sa.exc.IntegrityError:  # another process inserted it first
        with engine.begin() as c:
            c.execute(settings.update().where(settings.c.name == name).values(**values))


def claim_setting(engine, settings, name: str, value: str, stale_s: float) -> bool:
    """Take the setting `name` as a lease (with `value`), unless another process holds it,
    taken less than `stale_s` seconds ago; whether this process has it now. Released by
    writing it with `at=0`."""
    import sqlalchemy as sa

    now = time.time()
    with engine.begin() as c:
        if c.execute(settings.update().where((settings.c.name == name) & (settings.c.updated_at < now - stale_s))
                     .values(value=value, updated_at=now)).rowcount:
            return True
    try:
        with engine.begin() as c:
            c.execute(settings.insert().values(name=name, value=value, updated_at=now))
        return True
    except sa.exc.IntegrityError:  # it exists, and is held
        return False


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


def this_process() -> str:
    """host:pid of this process (a job's record names the process running it)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def user() -> str:
    """Who is submitting: the OS user."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        return str(os.getuid())


def to_record(row: dict[str, Any]) -> JobRecord:
    return JobRecord(
        id=row["id"], name=row["name"], state=observed_state(row), submitted_at=row["submitted_at"],
        started_at=row["started_at"], finished_at=row["finished_at"], attempts=row["attempts"],
        error=row["error"], checkpoint_dir=row["checkpoint_dir"], checkpoint_path=row["checkpoint_path"],
        owner=row.get("owner"), priority=row.get("priority") or 0, reason=row.get("reason"), ray_job=row.get("ray_job"),
        position=row.get("position"), launched_at=row.get("launched_at"),
    )


def observed_state(row: dict[str, Any]) -> str:
    """The stored state, or 'interrupted' for a running job nobody runs any more: its
    heartbeat a minute silent, or silent for three beats with its process here gone. (The
    queue's admitter finds a lost Ray Job sooner, from Ray; this rule holds where none is
    looking.) Not while its process here is alive and beating: resuming it then would put
    two trainers in one folder."""
    state = row["state"]
    if state != "running":
        return state
    if row["heartbeat_at"] is None:
        return state
    silence = time.time() - row["heartbeat_at"]
    if silence > STALE_S:  # a minute silent: ended elsewhere, or its pid here was reused
        return "interrupted"
    if silence > 3 * HEARTBEAT_S + 1 and _gone(row["worker"]) is True:  # ended here without recording it
        return "interrupted"
    return state


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
