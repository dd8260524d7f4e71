"""The global batch, and how the workers of a run split it.

    plan = plan_batches(cfg, world_size, loaded_state)   # BatchPlan(global_batch=64, micro_batch=16, accumulation=2, world_size=2)

An optimizer step trains `global_batch` samples: on each of `world_size` workers,
`accumulation` micro-batches of `micro_batch`. By default the global batch is
`batch_size x gradient_accumulation_steps x workers` of the run's start, and a checkpoint
keeps it: resumed on another number of workers, the run keeps that global batch, each worker
taking its share in micro-batches of at most `batch_size` (more accumulation where there are
fewer workers). `TrainingConfig.global_batch_size` sets it outright.

The epoch's samples are laid out so that step t trains positions [t*G, (t+1)*G) of the
epoch's order whatever the split (engine.data.order), so a position kept in samples means the
same thing on any number of workers: `resume_batch` turns one plan's position into another's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from trainyard.engine.config import TrainingConfig


@dataclass(frozen=True)
class BatchPlan:
    global_batch: int  # samples per optimizer step, over all workers
    micro_batch: int  # samples per forward pass, on each worker
    accumulation: int  # micro-batches per optimizer step
    world_size: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def saved(cls, state: Mapping[str, Any]) -> "BatchPlan":
        """The plan a checkpoint was trained with (one saved before plans: from its config)."""
        if state.get("batch_plan"):
            return cls(**state["batch_plan"])
        cfg, world = state["training_config"], state["world_size"]
        batch, accumulation = cfg.get("batch_size", 4), cfg.get("gradient_accumulation_steps", 1)
        return cls(batch * accumulation * world, batch, accumulation, world)


def plan_batches(cfg: TrainingConfig, world_size: int, loaded: Mapping[str, Any] | None = None) -> BatchPlan:
    """How `world_size` workers split the global batch: `cfg.global_batch_size`; else the one
    a resumed checkpoint (`loaded`, its state) trained with, unless this run changed
    batch_size or gradient_accumulation_steps, or it resumes at an epoch's end on a count
    that cannot split it (the run's describe_changes says so); else `batch_size x
    accumulation x workers`."""
    total = cfg.global_batch_size
    if total is None and loaded is not None:
        before = BatchPlan.saved(loaded)
        saved_cfg = loaded["training_config"]
        unchanged = all(saved_cfg.get(k, getattr(TrainingConfig(), k)) == getattr(cfg, k) for k in ("batch_size", "gradient_accumulation_steps"))
        at_epoch_end = loaded["position"]["epoch_complete"]
        total = before.global_batch if unchanged and not (at_epoch_end and before.global_batch % world_size) else None
    if total is None:
        return BatchPlan(cfg.batch_size * cfg.gradient_accumulation_steps * world_size, cfg.batch_size, cfg.gradient_accumulation_steps, world_size)
    return split(total, world_size, cfg.batch_size)


def split(total: int, world_size: int, largest: int) -> BatchPlan:
    """`total` samples a step over `world_size` workers, in micro-batches of at most `largest`
    (the fewest micro-batches that split each worker's share evenly)."""
    if total % world_size:
        raise ValueError(indivisible(total, [world_size]))
    share = total // world_size
    accumulation = next(a for a in range(math.ceil(share / largest), share + 1) if share % a == 0)
    return BatchPlan(total, share // accumulation, accumulation, world_size)


def indivisible(total: int, counts: list[int]) -> str:
    """The message for a global batch that some worker counts cannot split evenly."""
    bad = [w for w in counts if total % w]
    fits = math.lcm(*counts)
    nearest = max(fits, round(total / fits) * fits)
    return (
        f"global_batch_size {total} cannot be split evenly over {', '.join(map(str, bad))} worker(s) (each worker trains an equal "
        f"share of every step): set global_batch_size to a multiple of {fits} (e.g. {nearest}), or use worker counts that divide {total}"
    )


def resume_batch(batch_in_epoch: int, before: BatchPlan, after: BatchPlan) -> int:
    """The micro-batch of `after` at which the samples `before` had trained end. Both plans
    train the epoch's order in the same global steps, so this is exact at a step's end."""
    samples = batch_in_epoch * before.micro_batch * before.world_size
    per_batch = after.micro_batch * after.world_size
    if samples % per_batch:
        raise ValueError(f"position {samples} samples into the epoch is not a whole number of micro-batches of {after.micro_batch} on {after.world_size} workers")
    return samples // per_batch
