"""A run's folder and the checkpoints in it: claimed by the one run that writes there (what
a killed save left tidied), listed oldest first, the newest that verifies, a path resolved
to a checkpoint, pruned to the newest few. One checkpoint itself is `checkpoint.py`'s.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path

from trainyard.engine.checkpoint import MARKER, STATE_JSON, TMP_PREFIX, CheckpointError, verify


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Checkpoint directories in `run_dir` (complete or not), oldest save first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if p.is_dir() and not p.name.startswith(TMP_PREFIX) and _looks_like_checkpoint(p)]
    return sorted(found, key=_saved_at)


def latest_valid(run_dir: str | os.PathLike, warn=None) -> Path | None:
    """The newest checkpoint in `run_dir` that verifies; bad ones are reported and skipped."""
    return next(iter(_verified(run_dir, warn)), None)


def _verified(run_dir: str | os.PathLike, warn=None):
    """The checkpoints of `run_dir` that verify, newest first (lazily: a caller that needs
    only the newest verifies no more); bad ones are reported through `warn` and left out."""
    for candidate in reversed(list_checkpoints(run_dir)):
        try:
            verify(candidate)
        except CheckpointError as e:
            if warn:
                warn(f"skipping {e}; falling back to an older checkpoint")
            continue
        yield candidate


def candidates(path: str | os.PathLike, warn=None) -> list[Path]:
    """What a resume from `path` may use, newest first: the checkpoint itself, or a run
    directory's checkpoints that verify (bad ones reported through `warn` and left out)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if _looks_like_checkpoint(path):
        return [path]
    put_back_moved_aside(path)
    found = list(_verified(path, warn))
    if not found:
        raise CheckpointError(f"checkpoint: no valid checkpoint found in run directory {path}")
    return found


def resolve(path: str | os.PathLike, warn=None) -> Path:
    """A checkpoint directory itself, or the newest valid checkpoint of a run directory."""
    return candidates(path, warn)[0]


CLAIM = ".trainyard-run"  # in a run folder while a run writes there: {"host", "pid", "since"}
CLAIM_REFRESH_S = 30  # the holder touches its claim this often...
CLAIM_STALE_S = 180  # ...so one untouched this long is a dead run's, wherever it ran
_refreshing: dict[Path, threading.Event] = {}


class RunFolderInUse(ValueError):
    """A fresh run's folder is another run's: it holds checkpoints, or a run is writing there
    now. `resume_hint` is how the Python API continues it; the command line names --resume."""

    def __init__(self, run_dir: Path, problem: str, resume_hint: str):
        self.run_dir, self.problem = run_dir, problem
        super().__init__(f"checkpoint_dir {run_dir} {problem}; {resume_hint}, or choose a new checkpoint_dir")


def claim(run_dir: Path) -> None:
    """Make `run_dir` this process's to write, atomically: the claim file is created with
    O_EXCL, so of two runs started at once exactly one gets the folder (the other is told at
    once, before either has written a checkpoint). The holder touches it every
    CLAIM_REFRESH_S; a claim whose process is gone (on this machine) or that nobody touched
    for CLAIM_STALE_S (a run killed on another node of a shared filesystem) is taken over."""
    _make_writable(run_dir)
    for _ in range(3):
        try:
            fd = os.open(run_dir / CLAIM, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            holder = _holder(run_dir)
            if holder is None and _age(run_dir / CLAIM) < 5:  # created an instant ago, its holder still writing it
                raise RunFolderInUse(run_dir, "is being claimed by another run starting this instant", "wait for it and resume it then") from None
            if holder is not None and not _gone(run_dir, holder):
                since = time.strftime("%H:%M:%S", time.localtime(holder.get("since", 0)))
                raise RunFolderInUse(
                    run_dir, f"is being written by another run right now (process {holder.get('pid')} on {holder.get('host')}, "
                    f"since {since}); if that run is gone, delete {run_dir / CLAIM}", "wait for it and resume it then",
                ) from None
            _take_over(run_dir, holder)  # its run ended without releasing it: killed, or out of memory
            continue
        with os.fdopen(fd, "w") as f:
            json.dump({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}, f)
        _keep_fresh(run_dir)
        return
    raise RunFolderInUse(run_dir, "is claimed and released by other runs over and over", "try again")


def release(run_dir: Path) -> None:
    """Give up this process's claim on `run_dir` (a claim of another process stays)."""
    stop = _refreshing.pop(run_dir, None)
    if stop is not None:
        stop.set()
    holder = _holder(run_dir)
    if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        (run_dir / CLAIM).unlink(missing_ok=True)


def _keep_fresh(run_dir: Path) -> None:
    stop = _refreshing[run_dir] = threading.Event()

    def touch() -> None:
        while not stop.wait(CLAIM_REFRESH_S):
            with contextlib.suppress(OSError):
                os.utime(run_dir / CLAIM)

    threading.Thread(target=touch, name=f"trainyard-claim-{run_dir.name}", daemon=True).start()


def _holder(run_dir: Path) -> dict | None:
    return _holder_of(run_dir / CLAIM)


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")


def _gone(run_dir: Path, holder: dict) -> bool:
    """Whether the claiming run has ended: its process, on this machine; elsewhere, a claim
    nobody has touched for CLAIM_STALE_S."""
    if _age(run_dir / CLAIM) > CLAIM_STALE_S:
        return True
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int) or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _take_over(run_dir: Path, judged: dict | None) -> None:
    """Remove the dead run's claim that was judged; if another taker replaced it with a claim
    of its own in the meantime, that one is put back."""
    moved = run_dir / f"{TMP_PREFIX}claim-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(run_dir / CLAIM, moved)
    except FileNotFoundError:
        return
    if _holder_of(moved) not in (judged, None):
        with contextlib.suppress(FileExistsError):
            os.link(moved, run_dir / CLAIM)
    moved.unlink(missing_ok=True)


def _holder_of(path: Path) -> dict | None:
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # vanished, or half-written by a claimant killed at that instant: no one's
    return holder if isinstance(holder, dict) else None


def _make_writable(run_dir: Path) -> None:
    """Create `run_dir` and prove it writable now, before the work a failed first save would
    waste."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # a new run folder is owner-only
        probe = run_dir / f"{TMP_PREFIX}probe-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(
            f"checkpoint_dir {run_dir} cannot be written ({type(e).__name__}: {e.strerror or e}): "
            "choose a checkpoint_dir on a writable filesystem, not inside a file"
        ) from None


def tidy(run_dir: Path) -> None:
    """Tidy what a save killed part-way left (call while holding the folder's claim): its
    temporary directory is removed, and a checkpoint it had moved aside to replace is put
    back."""
    put_back_moved_aside(run_dir)
    for p in run_dir.iterdir():
        if p.name.startswith(TMP_PREFIX) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def put_back_moved_aside(run_dir: Path) -> None:
    """A save that replaces a checkpoint of the same name moves the old one aside first; if
    it was killed before the new one took the name, put the old one back."""
    aside = f"{TMP_PREFIX}old-"
    for p in run_dir.iterdir() if run_dir.is_dir() else ():
        original = run_dir / p.name[len(aside) :].rsplit("-", 1)[0]
        if p.name.startswith(aside) and p.is_dir() and not original.exists():
            os.rename(p, original)


def prune(run_dir: Path, keep: int | None, protect: Path | None = None) -> None:
    """Delete all but the `keep` most recently saved checkpoints, and stale temporaries."""
    for p in run_dir.iterdir() if run_dir.is_dir() else ():
        if p.name.startswith(TMP_PREFIX) and p.is_dir() and time.time() - p.stat().st_mtime > 3600:
            shutil.rmtree(p, ignore_errors=True)
    if keep is None:
        return
    ckpts = list_checkpoints(run_dir)
    for old in ckpts[: max(0, len(ckpts) - keep)]:
        if protect is None or old.resolve() != protect.resolve():
            shutil.rmtree(old, ignore_errors=True)


def _looks_like_checkpoint(p: Path) -> bool:
    return (p / MARKER).exists() or (p / STATE_JSON).exists() or (p / "model.pt").exists() or any(p.glob("*.distcp"))


def _saved_at(p: Path) -> int:
    for fname in (MARKER, STATE_JSON):
        try:
            return int(json.loads((p / fname).read_text())["saved_at_ns"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return p.stat().st_mtime_ns
