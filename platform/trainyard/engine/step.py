"""The optimizer step: NaN checks, unscale, clip, schedule, step.

    norm = optimizer_step(run, cfg, state, loss)   # after the window's backward passes
"""

from __future__ import annotations

import math

import torch

from trainyard.engine.config import TrainingConfig
from trainyard.engine.state import Run, TrainState


def optimizer_step(run: Run, cfg: TrainingConfig, state: TrainState, loss: float) -> float:
    """Take one optimizer step for a window whose loss is `loss`; returns the pre-clip
    gradient norm. A non-finite loss or norm raises before anything changes, so that state
    is never checkpointed."""
    if not math.isfinite(loss):
        raise FloatingPointError(
            f"loss is {loss} at epoch {state.epoch}, step {state.global_step + 1}; no checkpoint was written "
            f"for this state (the last good one is {run.last_checkpoint}). Lower learning_rate, set "
            "max_grad_norm, or check the data for invalid values"
        )
    if run.scaler is not None:
        run.scaler.unscale_(run.optimizer)
    params = [p for p in run.raw_model.parameters() if p.grad is not None]
    norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or float("inf")))
    if not math.isfinite(norm) and run.scaler is None:
        raise FloatingPointError(
            f"gradient norm is {norm} at epoch {state.epoch}, step {state.global_step + 1}; no checkpoint "
            "was written for this state. Lower learning_rate or set max_grad_norm"
        )
    for group in run.optimizer.param_groups:
        group["lr"] = learning_rate(cfg, state.global_step, run.batches_per_epoch)
    if run.scaler is not None:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return norm


def learning_rate(cfg: TrainingConfig, step: int, batches_per_epoch: int) -> float:
    """Linear warmup, then cosine decay to min_lr_ratio * learning_rate."""
    if not cfg.use_lr_schedule:
        return cfg.learning_rate
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    total = cfg.epochs * math.ceil(batches_per_epoch / cfg.gradient_accumulation_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    floor = cfg.min_lr_ratio * cfg.learning_rate
    return floor + (cfg.learning_rate - floor) * 0.5 * (1 + math.cos(math.pi * progress))
