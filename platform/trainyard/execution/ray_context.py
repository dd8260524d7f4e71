"""The run context inside a Ray Train worker: DDP, reduction, report, get_checkpoint."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Sequence

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn

from trainyard.engine.checkpoint import local_path
from trainyard.engine.context import RunContext


class RayTrainContext(RunContext):
    def __init__(self, delete_local_checkpoints: bool):
        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.device = ray.train.torch.get_device()
        self._delete_local = delete_local_checkpoints

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return ray.train.torch.prepare_model(model)

    def no_sync(self, model: nn.Module):
        return model.no_sync() if isinstance(model, nn.parallel.DistributedDataParallel) else contextlib.nullcontext()

    def all_reduce_sum(self, values: Sequence[float]) -> list[float]:
        if self.world_size == 1:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def report(self, metrics: dict[str, Any], checkpoint: Path | None) -> None:
        # A barrier: every rank calls it, rank 0 alone with the checkpoint it wrote.
        ray.train.report(
            _plain(metrics),
            checkpoint=ray.train.Checkpoint.from_directory(str(checkpoint)) if checkpoint is not None else None,
            checkpoint_dir_name=checkpoint.name if checkpoint is not None else None,
            delete_local_checkpoint_after_upload=self._delete_local,
        )

    def checkpoint_to_resume(self) -> Path | None:
        checkpoint = ray.train.get_checkpoint()
        return local_path(checkpoint) if checkpoint is not None else None


def _plain(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if v is None or isinstance(v, (int, float, str, bool))}
