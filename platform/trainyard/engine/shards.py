"""Sharded checkpoint state: torch.distributed.checkpoint (DCP), read without running code.

With FSDP every rank holds a shard of the model and optimizer; each writes its shard
(`__<rank>_0.distcp`) and rank 0 the index (`.metadata`). Reading reshards: a checkpoint
written by N ranks loads into M ranks, or into one unsharded model (a world of 1, or no
process group at all: the driver, an in-process run).

Reading runs no code from the checkpoint. DCP's `.metadata` is a pickle: it is unpickled
with an allowlist of exactly the globals an index names (the classes DCP's metadata module
defines, its storage record, `torch.Size`, dtypes, layouts and paths; by plain name, never a
dotted one), as `torch.load(weights_only=True)` allows tensors and containers only; what it
builds must be a whole `Metadata` whose entries point at the checkpoint's own shard files. The shards hold tensors
(read with `weights_only=True` by DCP itself) and pickled non-tensor entries (optimizer
hyperparameters, step counts), which DCP's default planner reads with
`weights_only=False`; here they are read with `weights_only=True`. Anything else is refused
with `CheckpointError`.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainyard.engine.checkpoint import CheckpointError
from trainyard.engine.trainable import checkpointed_names, state_kind

# Exactly the globals a DCP index refers to: the classes torch.distributed.checkpoint.metadata
# defines (not the names it imports: `os`, `torch`, `dataclass`, ...), the storage record of
# the file system writer, shapes, layouts, dtypes and paths. By module and plain name: a dotted
# name (pickle protocol 4 resolves "os.system" through a module's own imports) is never one.
_METADATA = "torch.distributed.checkpoint.metadata"
_ALLOWED = frozenset({
    *((_METADATA, name) for name in ("Metadata", "MetadataIndex", "StorageMeta", "TensorProperties",
                                      "TensorStorageMetadata", "ChunkStorageMetadata", "BytesStorageMetadata",
                                      "_MEM_FORMAT_ENCODING")),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    *(("pathlib", name) for name in ("PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath")),
})


def _allowed(module: str, name: str) -> bool:
    if (module, name) in _ALLOWED:
        return True
    return module == "torch" and name.isidentifier() and isinstance(getattr(torch, name, None), torch.dtype)


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if not _allowed(module, name):
            raise CheckpointError(
                f"its DCP index (.metadata) refers to {module}.{name}, which an index never holds: refusing to "
                "load it (it could run code). The checkpoint is corrupt or was tampered with"
            )
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise CheckpointError("its DCP index (.metadata) holds a persistent reference, which an index never holds: "
                              "refusing to load it. The checkpoint is corrupt or was tampered with")


def read_metadata(data: bytes, where: str) -> Any:
    """DCP's index (`.metadata`) from its bytes, unpickled through the allowlist above; anything
    but a DCP `Metadata` (a payload, a truncated or foreign file) is a `CheckpointError`."""
    from torch.distributed.checkpoint.metadata import Metadata

    try:
        metadata = _MetadataUnpickler(io.BytesIO(data)).load()
    except CheckpointError as e:
        raise CheckpointError(f"{where}: {e}") from None
    except Exception as e:  # noqa: BLE001 - an allowed class given arguments it rejects, a truncated pickle, ...
        raise CheckpointError(f"{where}: its DCP index (.metadata) cannot be read ({type(e).__name__}: {e}); "
                              "the checkpoint is corrupt or was tampered with") from None
    mappings = (getattr(metadata, "state_dict_metadata", None), getattr(metadata, "storage_data", None))
    if not isinstance(metadata, Metadata) or not all(isinstance(m, dict) for m in mappings):
        raise CheckpointError(f"{where}: its DCP index (.metadata) holds a {type(metadata).__name__} that is not a "
                              "whole DCP Metadata; the checkpoint is corrupt or was tampered with")
    for info in metadata.storage_data.values():
        _check_storage(info, where)
    return metadata


def _check_storage(info: Any, where: str) -> None:
    """Each entry is read from the file its record names, joined to the checkpoint's directory:
    that must be one of the checkpoint's own shard files (not `../elsewhere`), read as written
    (no stream transforms: trainyard's writer uses none)."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo

    name = getattr(info, "relative_path", None)
    own = isinstance(name, str) and name.endswith(".distcp") and name == Path(name).name and "\\" not in name
    if not isinstance(info, _StorageInfo) or not own or getattr(info, "transform_descriptors", None):
        raise CheckpointError(f"{where}: its DCP index (.metadata) points an entry at {name!r}, which is not one of the "
                              "checkpoint's own shard files (*.distcp); the checkpoint is corrupt or was tampered with")


def _safe_reader(directory: Path):
    from torch.distributed.checkpoint import FileSystemReader

    class SafeReader(FileSystemReader):
        """FileSystemReader whose metadata is unpickled through an allowlist."""

        def read_metadata(self, *args: Any, **kwargs: Any):
            from torch.distributed.checkpoint.metadata import StorageMeta

            path = self._get_metadata_path(kwargs.get("rank"))
            with self.fs.create_stream(path, "rb") as f:
                metadata = read_metadata(f.read(), f"checkpoint {directory}")
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(str(directory))


def _safe_planner(directory: Path):
    from torch.distributed.checkpoint import DefaultLoadPlanner

    class SafePlanner(DefaultLoadPlanner):
        """DefaultLoadPlanner whose non-tensor entries are unpickled with weights_only=True."""

        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            try:
                plain = torch.load(value, weights_only=True)
            except pickle.UnpicklingError as e:
                raise CheckpointError(
                    f"checkpoint {directory}: its entry {read_item.dest_index.fqn!r} is not plain data ({str(e).splitlines()[0]}); "
                    "refusing to load it (it could run code). The checkpoint is corrupt or was tampered with"
                ) from None
            safe = io.BytesIO()
            torch.save(plain, safe)  # plain data only now: the default reader may unpickle it as it likes
            safe.seek(0)
            super().load_bytes(read_item, safe)

    return SafePlanner()


def _state(model: nn.Module, optimizer: Any, grads: bool) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    names = checkpointed_names(model)  # a model with adapters: only its trainable parameters
    state = {"model": model_sd if names is None else {k: v for k, v in model_sd.items() if k in names}, "optimizer": optim_sd}
    if grads:  # mid-accumulation: the gradients so far, in the same shards as the parameters
        state["grads"] = {name: p.grad if p.grad is not None else torch.zeros_like(p) for name, p in model.named_parameters()
                          if names is None or name in names}
    return state


def save_state(directory: Path, model: nn.Module, optimizer: Any, grads: bool) -> None:
    """Write this rank's part of the model and optimizer (and gradients) into `directory`
    (a collective when a process group is up: every rank calls it)."""
    import torch.distributed.checkpoint as dcp

    dcp.save(_state(model, optimizer, grads), checkpoint_id=str(directory))


def load_state(directory: Path, model: nn.Module, optimizer: Any, grads: bool) -> None:
    """Read a sharded checkpoint into the live `model` and `optimizer`, resharded to how they
    are laid out now (sharded over any number of ranks, or whole)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    # DCP fills an optimizer's empty state with a zero-lr step before reading into it, unless
    # gradients exist. A checkpoint saved before the first optimizer step (mid-way through the
    # first window: gradients existed) holds no optimizer state: read none into this one either.
    with _read_errors(directory):
        saved = _safe_reader(directory).read_metadata().state_dict_metadata
    placeholders: set[int] = set()
    if not any(key.startswith("optimizer.state.") for key in saved):
        for p in model.parameters():
            if p.requires_grad and p.grad is None:
                p.grad = torch.zeros_like(p)
                placeholders.add(id(p))
    state = _state(model, optimizer, grads)
    _read(state, directory)
    strict = state_kind(model) == "whole"  # else the trainable parameters alone
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"], options=StateDictOptions(strict=strict))
    for name, p in model.named_parameters():
        if grads and name in state["grads"]:
            p.grad = state["grads"][name]
        elif id(p) in placeholders:
            p.grad = None


def full_model_state(directory: Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state dict from a sharded checkpoint, in this process alone (the
    driver, after an FSDP run)."""
    whole = {k: v.clone() for k, v in model.state_dict().items()}
    names = checkpointed_names(model)  # a model with adapters: the checkpoint holds the trainable ones, read into the rest
    state = {"model": {k: v for k, v in whole.items() if names is None or k in names}}
    _read(state, directory, no_dist=True)
    return {**whole, **state["model"]}


def _read(state: dict[str, Any], directory: Path, no_dist: bool = False) -> None:
    """dcp.load into `state`, through the safe reader and planner."""
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings(), _read_errors(directory):  # no_dist: "assuming ... a single process": it is
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, storage_reader=_safe_reader(directory), planner=_safe_planner(directory), no_dist=no_dist)


@contextlib.contextmanager
def _read_errors(directory: Path):
    """A shard or index that cannot be read is a bad checkpoint: say so as CheckpointError
    (DCP reports each rank's failure inside its own CheckpointException)."""
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        yield
    except CheckpointException as e:
        causes = [exc for exc, _trace in e.failures.values()]
        mine = next((c for c in causes if isinstance(c, CheckpointError)), None)
        if mine is not None:
            raise mine from None
        first = causes[0] if causes else e
        raise CheckpointError(f"checkpoint {directory}: its sharded state cannot be read ({type(first).__name__}: {first})") from None
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as e:
        raise CheckpointError(f"checkpoint {directory}: its sharded state cannot be read ({type(e).__name__}: {e})") from e
