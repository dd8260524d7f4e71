"""What a run is made of, when it saves, and exactly what a checkpoint saves of it.

    TrainState   where the run is (epoch, batch, step): hooks read it
    Progress     what the run has accumulated (history, the epoch's sums, a cut window, the
                 last checkpoint)
    SavePolicy   when a checkpoint is written inside an epoch, and the stop a hook asked for
    Run          what setup built (model, optimizer, data, run directory), and the parts that
                 own their own state: the model call (compiled or eager), the task, the
                 progress, the telemetry

`save_checkpoint` writes the state list below, and `restore` is its exact inverse::

    model.pt       the user's module's state_dict (unwrapped: no DDP / compile prefixes)
    optimizer.pt   the optimizer's state_dict
    state.pt       grad scaler, RNG tensors, gradients accumulated so far (mid-window only)
    trainer_state.json
                   position (TrainState), epoch_sums, window, history, early stopping's
                   state, RNG (plain), the
                   TrainingConfig, TaskSpec and model config, train_size, world_size
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainyard.engine import checkpoint as ckpt
from trainyard.engine import rng, run_folder
from trainyard.engine.batching import BatchPlan, resume_batch
from trainyard.engine.config import TrainingConfig
from trainyard.engine.context import RunContext
from trainyard.engine.data.collate import Collator
from trainyard.engine.early_stop import EarlyStopping
from trainyard.engine.metrics import MetricSums, RunningSums
from trainyard.engine.model_config import model_config_dict
from trainyard.engine.setup import ModelCall
from trainyard.engine.task import TaskChoice, TaskSpec
from trainyard.engine.telemetry import RunTelemetry
from trainyard.engine.trainable import checkpointed_names, state_kind

# Changing any of these in the middle of an epoch would change which samples the rest of
# the epoch sees, so a mid-epoch resume refuses it (and a different global batch: BatchPlan).
POSITION_FIELDS = ("random_seed", "shuffle_chunk_rows")


@dataclass
class TrainState:
    """Where the run is. Hooks may read it; only the trainer writes it."""

    epoch: int = 1  # the epoch in progress (from 1)
    batch_in_epoch: int = 0  # micro-batches of this epoch already trained
    global_step: int = 0  # optimizer steps taken
    epoch_complete: bool = False


@dataclass
class Progress:
    """What the run has accumulated beyond the weights."""

    # loss, grad_norm, learning_rate: per optimizer step; epochs: a row per epoch; evals: a row per evaluation
    history: dict[str, list] = field(default_factory=lambda: {"loss": [], "grad_norm": [], "learning_rate": [], "epochs": [], "evals": []})
    epoch_sums: MetricSums = field(default_factory=MetricSums)  # the epoch so far, on the host
    window: dict[str, Any] | None = None  # an accumulation window cut by a stop, or restored mid-window
    last_checkpoint: Path | None = None
    running: RunningSums | None = None  # the epoch's sums while it trains, on the device
    watch: EarlyStopping | None = None  # early stopping's best value and patience so far

    def start_epoch(self, device: torch.device) -> None:
        """Sum the epoch on the device, from what it has summed so far (a resumed epoch)."""
        self.running = RunningSums(self.epoch_sums, device)

    def sync(self) -> MetricSums:
        """The device sums read back into `epoch_sums` (one synchronisation)."""
        if self.running is not None:
            self.epoch_sums = self.running.host()
        return self.epoch_sums


class SavePolicy:
    """When a checkpoint is written besides every epoch's end: every `every_n_steps` optimizer
    steps inside an epoch, and where a stop was requested (after the current batch; inside an
    accumulation window, the window is saved part-way, so the run resumes exactly there)."""

    def __init__(self, every_n_steps: int | None):
        self.every_n_steps = every_n_steps
        self.stop_reason: str | None = None

    def request_stop(self, reason: str) -> None:
        self.stop_reason = reason

    @property
    def stopping(self) -> bool:
        return self.stop_reason is not None

    def cuts_window(self, last_of_window: bool) -> bool:
        """After a micro-batch: stop here, saving the window so far."""
        return self.stopping and not last_of_window

    def saves_after_step(self, state: TrainState, batches_per_epoch: int) -> bool:
        """After an optimizer step inside an epoch (its end saves anyway)."""
        due = bool(self.every_n_steps) and state.global_step % self.every_n_steps == 0
        return state.batch_in_epoch < batches_per_epoch and (self.stopping or due)


@dataclass
class Run:
    """Everything one call of `TrainingLoop.run` builds; discarded when it returns. The fields
    are set by setup and not reassigned; `call`, `task`, `progress` and `telemetry` own the
    state that changes as the run goes."""

    ctx: RunContext
    train_ds: Any
    val_ds: Any
    raw_model: nn.Module  # the user's module: what is saved and exported
    optimizer: torch.optim.Optimizer
    scaler: Any
    amp_dtype: torch.dtype | None
    collate: Collator
    run_dir: Path
    batches_per_epoch: int
    plan: BatchPlan  # the global batch and this run's split of it
    forward_kwargs: tuple[str, ...]
    trainable: list[torch.Tensor]  # parameters the optimizer updates
    check_vocab: int | None  # check each training batch's ids against this many (their range was not known up front)
    call: ModelCall  # the model as trained (maybe wrapped / compiled) and its loss
    task: TaskChoice
    telemetry: RunTelemetry
    progress: Progress = field(default_factory=Progress)

    def autocast(self):
        """The forward pass's autocast (a no-op context without AMP)."""
        return torch.autocast(self.ctx.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None)


def save_checkpoint(
    run: Run, state: TrainState, cfg: TrainingConfig, task_spec: TaskSpec | None, model_config: Any, ranks: list[dict] | None = None
) -> Path:
    """Write the position and everything needed to continue from it; prune old ones. With
    sharded state every rank calls it, and writes its part. `ranks`: each rank's own sums
    (epoch so far, cut window), on more than one rank."""
    rng_tensors, rng_plain = rng.capture()
    mid_window = run.progress.window is not None  # saved mid-accumulation: the gradients so far are state
    grads = None
    if mid_window and not run.ctx.shards_state:  # sharded gradients are written with the sharded state
        grads = [None if p.grad is None else p.grad.detach().cpu() for p in run.raw_model.parameters()]
    extra = {"scaler": run.scaler.state_dict() if run.scaler is not None else None, "rng": rng_tensors, "grads": grads}
    meta = {
        "position": vars(state).copy(),
        "epoch_sums": vars(run.progress.epoch_sums).copy(),
        "window": run.progress.window,
        "history": run.progress.history,
        "early_stopping": run.progress.watch.to_dict() if run.progress.watch is not None else None,
        "rng": rng_plain,
        "training_config": cfg.to_dict(),
        "task_spec": task_spec.to_dict() if task_spec else TaskSpec(name=run.task.name).to_dict(),
        "model_config": model_config_dict(model_config),
        "train_size": len(run.train_ds),
        "world_size": run.ctx.world_size,
        "batch_plan": run.plan.to_dict(),
        "ranks": ranks,
    }
    name = ckpt.checkpoint_name(state.epoch, state.batch_in_epoch)
    try:
        if run.ctx.shards_state:  # every rank writes its part
            meta["sharded_grads"] = mid_window
            meta["model_state"] = state_kind(run.raw_model)
            write = lambda directory: run.ctx.save_state(directory, run.raw_model, run.optimizer, grads=mid_window)  # noqa: E731
            path = ckpt.save_sharded(run.run_dir, name, write, extra, meta, run.ctx.gather, run.ctx.is_main)
        else:
            model_state, meta["model_state"] = checkpointed_model_state(run.raw_model)
            path = ckpt.save(run.run_dir, name, model_state, run.optimizer.state_dict(), extra, meta)
    except ckpt.CheckpointError as e:  # the run stops here: say where it can go on from
        last = run.progress.last_checkpoint
        where = f"its last good checkpoint is {last}, which a rerun resumes from" if last else "no checkpoint of it was saved yet"
        raise ckpt.CheckpointError(f"{e}. The run stopped at epoch {state.epoch}, step {state.global_step}: {where}") from e
    run.progress.last_checkpoint = path
    run_folder.prune(run.run_dir, cfg.keep_last_n_checkpoints, protect=path)
    return path


def checkpointed_model_state(model: nn.Module) -> tuple[dict[str, Any], str]:
    """What of the model a checkpoint holds, and which kind of state that is (`engine.trainable`)."""
    names = checkpointed_names(model)
    state = model.state_dict()
    return (state if names is None else {k: v for k, v in state.items() if k in names}), state_kind(model)


def checkpoint_position(run: Run, state: TrainState, cfg: TrainingConfig, task_spec: TaskSpec | None, model_config: Any) -> Path | None:
    """Save the position: the main rank writes it (with sharded state every rank its part);
    returns its path where this rank wrote one. A collective on more than one rank."""
    progress, ctx = run.progress, run.ctx
    progress.sync()
    ranks = None
    if ctx.world_size > 1:  # what each rank summed itself (the epoch so far, a cut window) is saved per rank
        ranks = ctx.gather({"epoch_sums": vars(progress.epoch_sums).copy(), "window": progress.window})
        if progress.window is not None and not ctx.shards_state:
            average_partial_gradients(run)
    writes = ctx.is_main or ctx.shards_state  # sharded: every rank writes its part
    return save_checkpoint(run, state, cfg, task_spec, model_config, ranks) if writes else None


def check_resumable(loaded: ckpt.LoadedCheckpoint, cfg: TrainingConfig, n_train: int, plan: BatchPlan) -> None:
    """A mid-epoch checkpoint continues only with the rest of the epoch it was cut from: the
    same samples, order and global batch; on another number of workers only from the end
    of an optimizer step (a step cut inside its accumulation has each worker's part)."""
    s = loaded.state
    if s["position"]["epoch_complete"]:
        return
    saved_cfg = s["training_config"]
    for name in POSITION_FIELDS:
        saved = saved_cfg.get(name, getattr(TrainingConfig(), name))  # older checkpoints lack newer fields
        if saved != getattr(cfg, name):
            raise ValueError(
                f"cannot resume mid-epoch from {loaded.path} with {name}={getattr(cfg, name)!r}: "
                f"it was saved with {name}={saved!r}, which decides the rest of the epoch's batches; "
                f"use {name}={saved!r}, or resume from an epoch-end checkpoint"
            )
    if s["train_size"] != n_train:
        raise ValueError(
            f"cannot resume mid-epoch from {loaded.path}: it was saved with {s['train_size']} training "
            f"samples, this run has {n_train}; resume from an epoch-end checkpoint"
        )
    before = BatchPlan.saved(s)
    if before == plan:
        return
    if before.global_batch != plan.global_batch:
        raise ValueError(
            f"cannot resume mid-epoch from {loaded.path} with a global batch of {plan.global_batch} ({_split(plan)}): it was saved "
            f"with {before.global_batch} samples a step ({_split(before)}), which decides the rest of the epoch's steps; set "
            f"global_batch_size={before.global_batch} (or leave batch_size and gradient_accumulation_steps as they were), or resume from an epoch-end checkpoint"
        )
    if s.get("window") is not None or any(r.get("window") is not None for r in s.get("ranks") or []):
        raise ValueError(
            f"cannot resume from {loaded.path} on {plan.world_size} worker(s) in micro-batches of {plan.micro_batch}: it was "
            f"saved inside an accumulation window on {before.world_size} worker(s) in micro-batches of {before.micro_batch}; "
            "resume with those, or from a checkpoint at the end of a step"
        )


def _split(plan: BatchPlan) -> str:
    accumulated = f" x {plan.accumulation} accumulated" if plan.accumulation > 1 else ""
    return f"batch_size={plan.micro_batch}{accumulated} on {plan.world_size} worker{'s' if plan.world_size > 1 else ''}"


def describe_changes(loaded: ckpt.LoadedCheckpoint, cfg: TrainingConfig, n_train: int, plan: BatchPlan | None = None) -> list[str]:
    """What differs between the run a checkpoint was saved by and this one, and what each
    difference means for the resumed run."""
    s, changes = loaded.state, []
    before = BatchPlan.saved(s)
    if plan is not None and before.world_size != plan.world_size:
        why = f": {before.global_batch} cannot be split evenly over {plan.world_size} workers" if before.global_batch % plan.world_size else ""
        kept = "kept" if before.global_batch == plan.global_batch else f"now {plan.global_batch} (was {before.global_batch}{why})"
        changes.append(
            f"workers {before.world_size} -> {plan.world_size}: the global batch is {kept}, {plan.global_batch} samples a step; "
            f"each worker trains micro-batches of {plan.micro_batch}, {plan.accumulation} a step"
        )
    saved = s["training_config"]
    schedule = " and the learning-rate schedule is recomputed for the new length (the rate moves to its value at this step)" if cfg.use_lr_schedule else ""
    if saved.get("epochs") != cfg.epochs:
        changes.append(f"epochs {saved.get('epochs')} -> {cfg.epochs}: the run now ends after epoch {cfg.epochs}{schedule}")
    if saved.get("learning_rate") != cfg.learning_rate:
        changes.append(
            f"learning_rate {saved.get('learning_rate')} -> {cfg.learning_rate}: the remaining steps use the new rate"
            f"{' (on the schedule)' if cfg.use_lr_schedule else ''}; the optimizer's moment estimates are kept"
        )
    if saved.get("weight_decay") != cfg.weight_decay:
        changes.append(
            f"weight_decay {saved.get('weight_decay')} -> {cfg.weight_decay} is not applied: the optimizer resumes with the "
            f"weight decay it saved; start a new run (no resume) to use {cfg.weight_decay}"
        )
    if saved.get("optimizer_kwargs") != cfg.optimizer_kwargs:
        changes.append(
            f"optimizer_kwargs {saved.get('optimizer_kwargs')} -> {cfg.optimizer_kwargs} is not applied: the optimizer resumes "
            "with the settings it saved; start a new run (no resume) to use the new ones"
        )
    if saved.get("lr_schedule", "cosine") != cfg.lr_schedule and cfg.use_lr_schedule:
        changes.append(f"lr_schedule {saved.get('lr_schedule', 'cosine')} -> {cfg.lr_schedule}: the rate moves to the new schedule's value at this step")
    watched = (saved.get("early_stopping_metric"), saved.get("early_stopping_mode"))
    if watched != (cfg.early_stopping_metric, cfg.early_stopping_mode) and cfg.early_stopping_metric is not None:
        changes.append(f"early_stopping_metric {saved.get('early_stopping_metric')} -> {cfg.early_stopping_metric}: its patience counts from here")
    if s.get("train_size") not in (None, n_train):
        changes.append(f"training samples {s['train_size']} -> {n_train} (the remaining epochs see the new data; an epoch now has other batches)")
    return changes


def average_partial_gradients(run: Run) -> None:
    """A stop inside an accumulation window under DDP: each rank holds only its own gradients
    so far (the window's last micro-batch would average them). Average them now, so the one
    copy the main rank saves is every rank's to resume with: the window's remaining
    micro-batches then add theirs, averaged at its end, to the same sum. A collective."""
    for p in run.trainable:
        partial = p.grad if p.grad is not None else torch.zeros_like(p)
        p.grad = run.ctx.sum_tensor(partial) / run.ctx.world_size


def restore(run: Run, loaded: ckpt.LoadedCheckpoint) -> TrainState:
    """The inverse of `save_checkpoint` (weights and optimizer are loaded in setup); returns
    the position to continue from. Call last: it restores the RNG streams."""
    s = loaded.state
    state = TrainState(**s["position"])
    if state.epoch_complete:
        state = TrainState(epoch=state.epoch + 1, global_step=state.global_step)
    before = BatchPlan.saved(s)
    if not state.epoch_complete and before != run.plan:  # another split of the same global batch (checked): the same samples
        state.batch_in_epoch = resume_batch(state.batch_in_epoch, before, run.plan)
    ranks = s.get("ranks")  # per rank where several saved it (at an epoch end the sums start afresh)
    if len(ranks or [s]) != run.ctx.world_size:  # on other workers: the epoch's sums so far go to the main rank alone
        merged = MetricSums()
        for r in ranks or [s]:
            for name, value in vars(MetricSums.saved(r["epoch_sums"])).items():
                setattr(merged, name, getattr(merged, name) + value)
        ranks = None
        s = {**s, "epoch_sums": vars(merged) if run.ctx.is_main else vars(MetricSums()), "window": None}
    own = ranks[run.ctx.rank] if ranks else s
    # own["window"]: saved mid-window, what this rank has summed of it
    history = {"evals": [], "learning_rate": [], **s["history"]}  # older checkpoints kept neither
    run.progress = Progress(history=history, epoch_sums=MetricSums.saved(own["epoch_sums"]), window=own["window"], last_checkpoint=loaded.path)
    if loaded.extra.get("grads") is not None:  # sharded gradients were read with the sharded state
        for p, g in zip(run.raw_model.parameters(), loaded.extra["grads"]):
            p.grad = None if g is None else g.to(p.device)
    # Last, so nothing before it (model construction above all) disturbs the streams.
    rng.restore(loaded.extra["rng"], s["rng"])
    return state
