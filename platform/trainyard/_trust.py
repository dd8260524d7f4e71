"""Trust boundaries: what the platform unpickles from disk must be writable by you alone.

A pickle runs code when it is loaded. The job queue's database holds pickled jobs and
results, and a sweep's folder holds the pickles Ray Tune restores from. Anyone else who can
write them could run code in every process that reads them, so the platform creates them
owner-only and refuses to unpickle from a file or folder that another user owns or that is
group- or world-writable. Where everyone who can write it is trusted (a team's shared
folder), opt out explicitly: `allow_shared_storage=True`, or TRAINYARD_ALLOW_SHARED_STORAGE=1.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

ALLOW_ENV = "TRAINYARD_ALLOW_SHARED_STORAGE"


class SharedStorageError(PermissionError):
    """A file or folder the platform would unpickle from can be written by others."""


def allowed_by_env() -> bool:
    return os.environ.get(ALLOW_ENV, "").strip().lower() in ("1", "true", "yes")


def make_private_dir(path: Path) -> Path:
    """Create `path` (and missing parents) with the new leaf owner-only; an existing
    folder is left as its owner set it."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:  # another process made it first
            pass
    return path


def make_private_file(path: Path) -> None:
    """Create an empty owner-only file unless it exists (SQLite then keeps its journal
    files at the same mode)."""
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))


def check_private(paths: Iterable[Path], what: str, *, allow: bool = False) -> None:
    """Refuse when any of `paths` (that exist) is owned by another user or writable by
    group or others, or sits in a folder others can write (the file could be swapped)."""
    if allow or allowed_by_env():
        return
    me = os.getuid()
    for path in paths:
        path = Path(path)
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        problem = _problem(st, me)
        if problem is None and not path.is_dir():
            parent = path.resolve().parent
            parent_problem = _problem(parent.stat(), me, sticky_ok=True)
            if parent_problem is not None:
                path, problem = parent, f"{parent_problem} (the folder holding {path.name})"
        if problem is not None:
            raise SharedStorageError(
                f"{what} {path} is {problem}. It holds pickles, and whoever can write it can run "
                f"code in every process that reads it. Make it yours and private (chown {_user()} "
                f"{path}; chmod go-w {path}), or, if everyone who can write it is trusted, opt out "
                f"with allow_shared_storage=True or {ALLOW_ENV}=1"
            )


def _problem(st: os.stat_result, me: int, *, sticky_ok: bool = False) -> str | None:
    if st.st_uid not in (me, 0):  # root can write anything anyway
        return f"owned by another user (uid {st.st_uid}; you are uid {me})"
    if sticky_ok and stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX:
        return None  # like /tmp: others cannot replace what is yours in it
    if st.st_mode & stat.S_IWOTH:
        return "world-writable"
    if st.st_mode & stat.S_IWGRP and not _private_group(st.st_gid):
        return "group-writable"
    return None


def _private_group(gid: int) -> bool:
    """A user-private group (umask 002 systems): named after you, with nobody else in it."""
    try:
        import grp

        group = grp.getgrgid(gid)
    except (ImportError, KeyError):
        return False
    return group.gr_name == _user() and set(group.gr_mem) <= {_user()}


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return str(os.getuid())
