"""Checkpoints: one directory per save, so it is a `ray.train.Checkpoint` as-is.

Layout of a checkpoint directory (everything the loop needs to continue bit-exactly)::

    model.pt             model state_dict
    optimizer.pt         optimizer state_dict
    state.pt             grad scaler, RNG states (python, numpy, torch, cuda), gradients
                         accumulated so far when saved mid-accumulation
    trainer_state.json   format version, position (epoch, batch_in_epoch, global_step),
                         partial sums of the epoch and window, history, TrainingConfig, TaskSpec
    COMPLETE             written last: size and sha256 of every file above

A save is written to a hidden temporary directory beside its final name and renamed into
place, so a crash never leaves a half-written checkpoint under a real name; a full disk
is named as one. Loading checks the marker and every hash before reading, and reads tensors
with `weights_only=True`. A run's folder of checkpoints (the newest that verifies, pruning,
tidying after a killed save) is `run_folder.py`'s.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from trainyard.engine import rng

FORMAT_VERSION = 1
MARKER = "COMPLETE"
STATE_JSON = "trainer_state.json"
TENSOR_FILES = ("model.pt", "optimizer.pt", "state.pt")
TMP_PREFIX = ".tmp-"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or corrupt."""


@dataclass
class LoadedCheckpoint:
    path: Path
    model: dict[str, Any] | None  # None when sharded: the run context reads it into the live model
    optimizer: dict[str, Any] | None
    extra: dict[str, Any]  # state.pt
    state: dict[str, Any]  # trainer_state.json

    @property
    def sharded(self) -> bool:
        return bool(self.state.get("sharded"))


def checkpoint_name(epoch: int, batch_in_epoch: int) -> str:
    return f"checkpoint_e{epoch:04d}_b{batch_in_epoch:07d}"


@contextlib.contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a hidden temporary directory beside `final`, renamed to it on success.

    An existing `final` is replaced (moved aside first, so one complete version always
    exists); on failure the temporary directory is removed and `final` is untouched.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{TMP_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        _fsync_dir(tmp)
        if final.exists():
            old = final.parent / f"{TMP_PREFIX}old-{final.name}-{uuid.uuid4().hex[:8]}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save(run_dir: Path, name: str, model: dict, optimizer: dict, extra: dict, state: dict) -> Path:
    """Write a complete checkpoint atomically; returns its final path."""
    final = run_dir / name
    with atomic_directory(final) as tmp, _space_errors(final):
        for fname, obj in zip(TENSOR_FILES, (model, optimizer, extra)):
            torch.save(obj, tmp / fname)
        state = dict(state, format_version=FORMAT_VERSION, saved_at_ns=time.time_ns())
        (tmp / STATE_JSON).write_text(json.dumps(state, indent=1))
        files = {f: describe(tmp / f) for f in (*TENSOR_FILES, STATE_JSON)}
        marker = {"format_version": FORMAT_VERSION, "saved_at_ns": state["saved_at_ns"], "files": files}
        _write_synced(tmp / MARKER, json.dumps(marker, indent=1))
    return final


def save_sharded(run_dir: Path, name: str, write_state, extra: dict, state: dict, gather, is_main: bool) -> Path:
    """The sharded form of `save`, called on every rank: `write_state(directory)` writes this
    rank's part of the model and optimizer (a collective); the main rank adds state.pt and
    trainer_state.json, and, once every rank's files are written, a COMPLETE marker listing
    the size and sha256 of all of them. Each rank writes into its own directory (Ray Train
    merges them into one checkpoint); `verify` holds on the merged one."""
    final = run_dir / name
    with atomic_directory(final) as tmp, _space_errors(final):
        write_state(tmp)
        if is_main:
            torch.save(extra, tmp / "state.pt")
            state = dict(state, format_version=FORMAT_VERSION, saved_at_ns=time.time_ns(), sharded=True)
            (tmp / STATE_JSON).write_text(json.dumps(state, indent=1))
        mine = {p.relative_to(tmp).as_posix(): describe(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        everyone = gather(mine)
        if is_main:
            files = {f: d for part in everyone for f, d in part.items()}
            marker = {"format_version": FORMAT_VERSION, "saved_at_ns": state["saved_at_ns"], "sharded": True, "files": files}
            _write_synced(tmp / MARKER, json.dumps(marker, indent=1))
    return final


_FULL = 1 << 20  # bytes free below which a failed write is taken for a full disk


@contextlib.contextmanager
def _space_errors(final: Path) -> Iterator[None]:
    """A save that fails because the disk is full says so (PyTorch's own words for it are
    "[enforce fail at inline_container.cc] unexpected pos"); measured before the partial
    checkpoint is removed, which frees the space again."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        try:
            free = shutil.disk_usage(final.parent).free
        except OSError:
            free = None
        if getattr(e, "errno", None) == errno.ENOSPC or (free is not None and free < _FULL):
            shown = f"{free / 1e6:.1f} MB free" if free is not None else "its free space unknown"
            raise CheckpointError(
                f"checkpoint {final} could not be written: no space left on the device holding {final.parent} ({shown}); "
                "free some space, keep fewer checkpoints (keep_last_n_checkpoints) or write elsewhere (checkpoint_dir)"
            ) from e
        raise


def load(path: str | os.PathLike, map_location: Any = "cpu") -> LoadedCheckpoint:
    """Load one checkpoint directory, verifying it first (a sharded one's model and
    optimizer are read later, into the live model, by the run context)."""
    path = Path(path)
    marker = verify(path)
    tensors = {"model.pt": None, "optimizer.pt": None}
    for fname in ("state.pt",) if marker.get("sharded") else TENSOR_FILES:
        try:
            tensors[fname] = torch.load(path / fname, map_location=map_location, weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
            raise CheckpointError(f"checkpoint {path}: cannot load {fname} ({type(e).__name__}: {e})") from e
    loaded = LoadedCheckpoint(path, tensors["model.pt"], tensors["optimizer.pt"], tensors["state.pt"], _read_state(path))
    _check_contents(loaded)
    return loaded


# What restoring reads from trainer_state.json (a "ranks" list of per-rank sums is optional).
STATE_FIELDS = ("position", "epoch_sums", "window", "history", "rng", "training_config", "train_size", "world_size")
POSITION_KEYS = ("epoch", "batch_in_epoch", "global_step", "epoch_complete")


def _read_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads((path / STATE_JSON).read_text())
    except ValueError as e:
        raise CheckpointError(f"checkpoint {path}: file {STATE_JSON} is not valid JSON ({e})") from e
    missing = [f for f in STATE_FIELDS if f not in state] if isinstance(state, dict) else list(STATE_FIELDS)
    if not missing and isinstance(state["position"], dict):
        missing = [f"position.{k}" for k in POSITION_KEYS if k not in state["position"]]
    if missing:
        raise CheckpointError(
            f"checkpoint {path}: file {STATE_JSON} lacks {', '.join(missing)}: it was not written by trainyard's save, "
            "or by a version that saved less; resume from another checkpoint"
        )
    return state


def _check_contents(loaded: LoadedCheckpoint) -> None:
    """What restoring reads, of the kinds the save wrote. The files of a checkpoint can match
    its marker and still be wrong (edited, or broken before they were signed): refused here,
    naming the file and the field, instead of failing somewhere inside the restore."""
    s, where = loaded.state, f"checkpoint {loaded.path}: file {STATE_JSON}"

    def bad(field: str, problem: str) -> CheckpointError:
        return CheckpointError(f"{where}: {field} {problem}; it is not what trainyard's save writes: resume from another checkpoint")

    position = s["position"]
    if not isinstance(position, dict) or set(position) != set(POSITION_KEYS):
        raise bad("position", f"holds {sorted(position) if isinstance(position, dict) else position!r}, not {list(POSITION_KEYS)}")
    if not all(isinstance(position[k], int) and position[k] >= 0 for k in POSITION_KEYS):
        raise bad("position", f"holds {position!r}: whole numbers >= 0")
    for field, kind in (("train_size", int), ("world_size", int), ("training_config", dict), ("history", dict), ("epoch_sums", dict)):
        if not isinstance(s[field], kind) or isinstance(s[field], bool):
            raise bad(field, f"is {s[field]!r}, not a {kind.__name__}")
    if not set(s["epoch_sums"]) <= {"loss", "count", "correct", "seq_correct", "num_seqs", "scored"} or not all(
            isinstance(v, (int, float)) for v in s["epoch_sums"].values()):  # fmt: skip
        raise bad("epoch_sums", f"is {s['epoch_sums']!r}")
    if s["window"] is not None and (not isinstance(s["window"], dict) or set(s["window"]) != {"count", "loss"}):
        raise bad("window", f"is {s['window']!r}, not null or {{count, loss}}")
    if not all(isinstance(s["history"].get(k), list) for k in ("loss", "grad_norm", "epochs")):
        raise bad("history", "lacks its loss, grad_norm or epochs list")
    extra = loaded.extra
    try:
        if not isinstance(extra, dict) or not isinstance(s["rng"], dict):
            raise TypeError("not a mapping")
        rng.check(extra["rng"], s["rng"])
    except (TypeError, ValueError, KeyError, IndexError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {loaded.path}: its random states (rng in {STATE_JSON} and state.pt) cannot be restored "
                              f"({type(e).__name__}: {e}); resume from another checkpoint") from None


def verify(path: Path) -> dict[str, Any]:
    """Raise CheckpointError unless `path` is a complete, uncorrupted checkpoint."""
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a directory")
    marker_path = path / MARKER
    if not marker_path.is_file():
        raise CheckpointError(
            f"checkpoint {path} is incomplete: its {MARKER} marker is missing (the save was interrupted)"
        )
    try:
        marker = json.loads(marker_path.read_text())
        files = marker["files"]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path}: file {MARKER} is corrupt ({e})") from e
    if marker.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {marker['format_version']}, newer than this trainyard "
            f"reads ({FORMAT_VERSION}); upgrade trainyard"
        )
    unlisted = sorted(set(read_by_loader(path, bool(marker.get("sharded")))) - set(files))
    if unlisted:
        raise CheckpointError(
            f"checkpoint {path}: its {MARKER} marker does not list {', '.join(unlisted)}, which loading reads: "
            "the marker is damaged or was written by hand, so nothing in it can be trusted"
        )
    for fname, expected in files.items():
        fpath = path / fname
        if not fpath.is_file():
            raise CheckpointError(f"checkpoint {path}: file {fname} is missing")
        actual = describe(fpath)
        if actual["size"] != expected["size"]:
            raise CheckpointError(
                f"checkpoint {path}: file {fname} is truncated or corrupt "
                f"({actual['size']} bytes, expected {expected['size']})"
            )
        if actual["sha256"] != expected["sha256"]:
            raise CheckpointError(f"checkpoint {path}: file {fname} is corrupt (its sha256 does not match)")
    return marker


def read_by_loader(path: Path, sharded: bool) -> list[str]:
    """The files loading a checkpoint reads: each must be listed (and hashed) in its marker.
    A sharded one's shards are every `*.distcp` present, and its DCP index."""
    if sharded:
        return ["state.pt", STATE_JSON, ".metadata", *(p.name for p in path.glob("*.distcp"))]
    return [*TENSOR_FILES, STATE_JSON]


def is_ray_checkpoint(source: Any) -> bool:
    return hasattr(source, "to_directory") and hasattr(source, "filesystem")


def local_path(source: Any) -> Path:
    """A local directory for a path or a `ray.train.Checkpoint` (downloaded if remote)."""
    # A Ray Checkpoint first: it defines __fspath__ (to raise), so it passes as PathLike.
    if is_ray_checkpoint(source):
        if type(source.filesystem).__name__ == "LocalFileSystem":
            return Path(source.path)
        return Path(source.to_directory())
    if isinstance(source, (str, os.PathLike)):
        return Path(source)
    raise TypeError(f"resume_from must be a path or a ray.train.Checkpoint, got {type(source).__name__}")


def describe(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return {"size": path.stat().st_size, "sha256": digest.hexdigest()}


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
