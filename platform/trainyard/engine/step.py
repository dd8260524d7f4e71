"""The optimizer step: NaN checks, unscale, clip, schedule, step.

    loss, stops = reduce_window(run, feed, window_loss, stop)          # over ranks, with the stop votes
    loss, norm, stops = optimizer_step(run, cfg, state, loss, stops)   # after the window's backward passes
    check_cut_window(run, state, window_loss)                          # before a stop saves a window part-way
"""

from __future__ import annotations

import math
from typing import Any

import torch

from trainyard.engine.config import TrainingConfig
from trainyard.engine.state import Run, TrainState


def optimizer_step(run: Run, cfg: TrainingConfig, state: TrainState, loss: torch.Tensor, stops: torch.Tensor) -> tuple[float, float, float]:
    """Take one optimizer step for a window whose mean loss is `loss` (a device scalar);
    returns (loss, pre-clip gradient norm, `stops`) as numbers: the step's one read of the
    device (`stops`: the ranks' votes to stop, read with them).
    A non-finite loss or norm raises, and the step changes nothing, so that state is never
    checkpointed (nor left in the model)."""
    if run.scaler is not None:
        run.scaler.unscale_(run.optimizer)
    norm = torch.nn.utils.clip_grad_norm_(run.trainable, cfg.max_grad_norm or float("inf"))  # skips those without a grad
    if hasattr(norm, "full_tensor"):  # sharded parameters: the norm of the whole gradient, over all shards
        norm = norm.full_tensor()
    for group in run.optimizer.param_groups:
        group["lr"] = learning_rate(cfg, state.global_step, run.batches_per_epoch, run.plan.accumulation)
    # A fused optimizer skips its update on the device when told the step is not finite, so
    # the step is launched before the read and the device never waits for the host.
    guarded = run.scaler is None and all(group.get("fused") for group in run.optimizer.param_groups)
    if guarded:
        run.optimizer.found_inf = (~torch.isfinite(loss) | ~torch.isfinite(norm)).float()
        run.optimizer.step()
        del run.optimizer.found_inf
    loss_value, norm_value, stops_value = torch.stack([loss.double(), norm.to(loss.device, torch.float64), stops.double()]).tolist()
    if not math.isfinite(loss_value):
        raise FloatingPointError(
            f"loss is {loss_value} at epoch {state.epoch}, step {state.global_step + 1}; no checkpoint was written "
            f"for this state (the last good one is {run.progress.last_checkpoint}). Lower learning_rate, set "
            "max_grad_norm, or check the data for invalid values"
        )
    if not math.isfinite(norm_value) and run.scaler is None:
        raise FloatingPointError(
            f"gradient norm is {norm_value} at epoch {state.epoch}, step {state.global_step + 1}; no checkpoint "
            "was written for this state. Lower learning_rate or set max_grad_norm"
        )
    if run.scaler is not None:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    elif not guarded:
        run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return loss_value, norm_value, stops_value


def reduce_window(run: Run, feed: Any, window_loss: torch.Tensor, stop: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The window's loss summed over ranks, and how many ranks must stop (`stop`: this one's
    vote, from its context's `stop_signal`), in one collective; the host reads the votes with
    the loss (`optimizer_step`). The prefetched window's target count rides along (every rank
    has the same windows, so all agree whether) and is left in `feed.summed_count`."""
    values = [window_loss, scalar(run, stop)]
    upcoming = feed.upcoming_count()
    if upcoming is not None:
        values.append(scalar(run, upcoming))
    summed = run.ctx.sum_tensor(torch.stack(values))
    if upcoming is not None:
        feed.summed_count = summed[2]
    return summed[0], summed[1]


def learning_rate(cfg: TrainingConfig, step: int, batches_per_epoch: int, accumulation: int | None = None) -> float:
    """Linear warmup over warmup_steps, then `cfg.lr_schedule`: cosine or linear decay to
    min_lr_ratio * learning_rate at the last step, or constant. `accumulation`: micro-batches
    per step (default: the config's; a run's BatchPlan has the one it trains with)."""
    if not cfg.use_lr_schedule:
        return cfg.learning_rate
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.learning_rate
    total = cfg.epochs * math.ceil(batches_per_epoch / (accumulation or cfg.gradient_accumulation_steps))
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    floor = cfg.min_lr_ratio * cfg.learning_rate
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.lr_schedule == "cosine" else 1 - progress
    return floor + (cfg.learning_rate - floor) * shape


def check_cut_window(run: Run, state: TrainState, window_loss: torch.Tensor) -> None:
    """A stop inside an accumulation window saves what the window has summed so far: refuse,
    as the step would, when that is not finite on any rank (its loss, or without a loss
    scaler its gradients). A collective: every rank stopping there calls it."""
    loss_bad = (~torch.isfinite(window_loss.detach())).any()
    grads_bad = torch.zeros_like(loss_bad)
    if run.scaler is None:  # with a scaler, non-finite gradients are skipped at the step, as they would have been
        for p in run.trainable:
            if p.grad is not None:
                grad = p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad  # a shard: this rank's part
                grads_bad = grads_bad | (~torch.isfinite(grad)).any()
    loss_bad, grads_bad = run.ctx.sum_tensor(torch.stack([loss_bad, grads_bad]).double()).tolist()
    if loss_bad or grads_bad:
        what = "loss is" if loss_bad else "gradients are"
        raise FloatingPointError(
            f"the {what} not finite at epoch {state.epoch}, step {state.global_step + 1} (a stop was requested inside its "
            f"accumulation window); no checkpoint was written for this state (the last good one is {run.progress.last_checkpoint}). "
            "Lower learning_rate, set max_grad_norm, or check the data for invalid values"
        )


def measures_predictions(cfg: TrainingConfig, batch_in_epoch: int, accumulation: int | None = None) -> bool:
    """Whether the step starting at `batch_in_epoch` measures accuracy and exact match: every
    `train_metrics_every_n_steps`-th optimizer step of the epoch, its first included. The same
    steps on every rank and at any accumulation, so runs that equal each other still do."""
    return (batch_in_epoch // (accumulation or cfg.gradient_accumulation_steps)) % cfg.train_metrics_every_n_steps == 0


def scalar(run: Run, value: float) -> torch.Tensor:
    """`value` on the run's device, in the dtype its sums are kept in. torch.full writes on the
    device; torch.tensor(value, device=...) waits to copy from pageable host memory."""
    return torch.full((), float(value), dtype=run.progress.running.sums["loss"].dtype, device=run.ctx.device)
