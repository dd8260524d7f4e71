"""Evaluation on the validation data, and when it is due (early stopping, which watches
its results, is early_stop.py's).

    metrics = evaluate(run, cfg)                     # val/* over all ranks
    due_inside_epoch(cfg, state, batches_per_epoch)  # after this step (every eval_every_n_steps)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainyard.engine.config import TrainingConfig
from trainyard.engine.data.feed import make_loader
from trainyard.engine.data.order import eval_batches
from trainyard.engine.metrics import evaluation_sums

if TYPE_CHECKING:
    from trainyard.engine.state import Run, TrainState


def evaluate(run: Run, cfg: TrainingConfig) -> dict[str, float]:
    """The model's val/* metrics on the run's validation data, summed over every rank."""
    ctx = run.ctx
    batches = eval_batches(len(run.val_ds), cfg.batch_size, ctx.rank, ctx.world_size)
    loader = make_loader(run.val_ds, batches, run.collate, cfg.num_workers, ctx.device.type == "cuda")
    padding = 0
    if ctx.shards_state:  # every forward gathers the shards, so every rank runs as many (the extra ones count nothing)
        padding = max(len(eval_batches(len(run.val_ds), cfg.batch_size, r, ctx.world_size)) for r in range(ctx.world_size)) - len(batches)
    sums = evaluation_sums(
        run.call.model, loader, run.task.name, run.collate.pad_token_id, ctx.device, run.forward_kwargs, run.amp_dtype,
        padding_forwards=padding, padding_batch=run.collate([run.val_ds[0]]) if padding else None,
    )
    return sums.reduced(ctx).metrics("val", run.task.name, run.task.answers)


def due_inside_epoch(cfg: TrainingConfig, state: TrainState, batches_per_epoch: int) -> bool:
    """An evaluation is due after this step (not at the epoch's end: that evaluates anyway)."""
    every = cfg.eval_every_n_steps
    return bool(every) and state.global_step % every == 0 and state.batch_in_epoch < batches_per_epoch
