"""A run's folder and the checkpoints in it: listed oldest first, the newest that verifies,
a path resolved to a checkpoint, made ready for writing (what a killed save left tidied),
pruned to the newest few. One checkpoint itself is `checkpoint.py`'s.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path

from trainyard.engine.checkpoint import MARKER, STATE_JSON, TMP_PREFIX, CheckpointError, verify


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint directories in `run_dir` (complete or not), oldest save first."""
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if p.is_dir() and not p.name.startswith(TMP_PREFIX) and _looks_like_checkpoint(p)]
    return sorted(found, key=_saved_at)


def latest_valid(run_dir: Path, warn=None) -> Path | None:
    """The newest checkpoint in `run_dir` that verifies; bad ones are reported and skipped."""
    return next(iter(_verified(run_dir, warn)), None)


def _verified(run_dir: Path, warn=None):
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


def open_for_writing(run_dir: Path) -> None:
    """Create `run_dir` and prove it writable now, before the work a failed first save would
    waste; tidy what a save killed part-way left (a run directory has one writer): its
    temporary directory is removed, and a checkpoint it had moved aside to replace is put
    back."""
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
