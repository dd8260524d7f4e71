"""How a rank of a process group holds the model: a DDP replica, or an FSDP2 shard.

    shard(model, training_config, device)     fully_shard each repeated block, then the root
    no_sync(model)                            DDP: skip the gradient reduction of a micro-batch
    ProcessGroupContext(training_config)      the run context of one rank: either of the two,
                                              and the collectives the loop needs

Plain torch.distributed (no Ray): usable wherever a process group is up (Ray Train's
workers, whose context extends ProcessGroupContext, torchrun, or a world of one).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Sequence

import torch
from torch import nn

from trainyard.engine.config import TrainingConfig
from trainyard.engine.context import RunContext
from trainyard.engine.setup import blocks


def shard(model: nn.Module, cfg: TrainingConfig, device: torch.device) -> nn.Module:
    """FSDP2 (`fully_shard`) on each repeated block (`fsdp_wrap`, else the children of the
    model's nn.ModuleLists), then on the root, so a block's parameters are gathered only
    while it computes. With `use_amp`, parameters compute in bfloat16 and gradients reduce
    in float32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    model.to(device)
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if cfg.use_amp else MixedPrecisionPolicy()
    for block in blocks(model, cfg.fsdp_wrap):
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def no_sync(model: nn.Module):
    """Accumulate this micro-batch's gradients locally (the last one of a window syncs).
    DDP only: an FSDP2 module reduce-scatters every micro-batch, so its accumulated gradients
    stay sharded (skipping the sync would hold them whole on every rank until the window
    ends: the memory FSDP saves, and not in the sharded state a checkpoint writes)."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


class ProcessGroupContext(RunContext):
    """One rank of the torch.distributed process group this process has joined.
    `training_config.parallelism` picks DDP (a replica per rank) or FSDP (a shard per rank;
    every rank then writes its part of each checkpoint, into its own `checkpoint_dir`)."""

    def __init__(self, training_config: TrainingConfig | None = None, device: str | torch.device | None = None):
        import torch.distributed as dist

        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        default = f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device or default)
        self.use(training_config)

    def use(self, training_config: TrainingConfig | None) -> None:
        self._config = training_config
        self.shards_state = training_config is not None and training_config.parallelism == "fsdp"

    def prepare_model(self, model: nn.Module) -> nn.Module:
        if self.shards_state:
            return shard(model, self._config, self.device)
        model = model.to(self.device)
        if self.world_size == 1:
            return model
        return nn.parallel.DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def no_sync(self, model: nn.Module):
        return no_sync(model)

    def gather(self, value: Any) -> list[Any]:
        if self.world_size == 1:
            return [value]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def all_reduce_sum(self, values: Sequence[float]) -> list[float]:
        if self.world_size == 1:
            return [float(v) for v in values]
        import torch.distributed as dist

        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def sum_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return tensor
        import torch.distributed as dist

        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor
