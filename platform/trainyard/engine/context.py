"""The run context: everything the loop needs from the place it runs in.

The loop never asks where it is. Local runs get `LocalContext`; Ray Train workers and Ray
Tune trials get their own implementations (in `trainyard.execution` / `trainyard.hpo`),
which is the only place those libraries are touched.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, ContextManager, Sequence

import torch
from torch import nn

from trainyard.engine import shards


class RunContext:
    """Interface. `rank`, `world_size` and `device` are plain attributes."""

    rank: int = 0
    world_size: int = 1
    device: torch.device
    # Where this run writes its checkpoints, as the environment decides (a Ray worker's
    # staging folder, a job's folder); None: the TrainingConfig's checkpoint_dir, else the
    # resumed checkpoint's folder, else checkpoints/<run id>.
    run_dir: Path | None = None
    # The run's name, as its outputs (tracker runs, TensorBoard folders) are named; None: the
    # name of its run folder.
    run_name: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Move to the device and wrap for data parallelism if there is any."""
        raise NotImplementedError

    def no_sync(self, model: nn.Module) -> ContextManager:
        """Skip gradient synchronisation for a micro-batch that is not the last of its step."""
        return contextlib.nullcontext()

    def all_reduce_sum(self, values: Sequence[float]) -> list[float]:
        """Sum numbers over all ranks (identity for one process)."""
        return [float(v) for v in values]

    def sum_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum a device tensor over all ranks without reading it on the host (identity for one
        process)."""
        return tensor

    def report(self, metrics: dict[str, Any], checkpoint: Path | None) -> None:
        """Publish epoch metrics and, on the main rank, the checkpoint just written."""

    def stop_signal(self) -> str | None:
        """Why this process must stop soon (its machine is being taken away), or None. Asked
        at every optimizer step; when any rank answers, every rank saves a checkpoint at that
        step and the run ends there, for its environment to restart it from that checkpoint."""
        return None

    def stopped_for_signal(self) -> None:
        """Called on every rank when a `stop_signal` ended the run, after its last checkpoint
        and hooks, before the run returns: what the environment does then (Ray: restart it)."""

    def checkpoint_to_resume(self) -> Path | None:
        """A checkpoint the environment wants the run to resume from (after a restart)."""
        return None

    def describe(self, path: Path) -> str:
        """A checkpoint as messages name it (one fetched from elsewhere: where it came from)."""
        return str(path)

    # -- sharded state (FSDP): every rank holds, writes and reads a part ------------------------

    shards_state: bool = False  # True: each checkpoint's model/optimizer state is written by every rank

    def save_state(self, directory: Path, model: nn.Module, optimizer: Any, grads: bool) -> None:
        """Write this rank's part of the model and optimizer state (and, mid-window, of the
        gradients) into `directory` (only when `shards_state`)."""
        shards.save_state(directory, model, optimizer, grads)

    def load_state(self, directory: Path, model: nn.Module, optimizer: Any, grads: bool) -> None:
        """Read a sharded checkpoint into this rank's model and optimizer, resharded to how
        they are laid out here (any world size, or one unsharded process)."""
        shards.load_state(directory, model, optimizer, grads)

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value` (a picklable object), in rank order."""
        return [value]


class LocalContext(RunContext):
    """This process, one device."""

    def __init__(self, device: str | None = None, run_dir: str | Path | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.run_dir = Path(run_dir) if run_dir is not None else None

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)
