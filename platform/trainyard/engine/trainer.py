"""The engine `Trainer`: one training loop, whatever runs it.

    results = Trainer(model, config, training_config).train(train_data, val_data)

Phases of a run, each a method below: `_setup` (data, model, optimizer, resume),
`_train_epoch` -> `_window` -> `_micro_step` / `_optimizer_step`, `_evaluate`,
`_save_checkpoint`, `_results`. The loop talks to its environment only through the run
context (`context.py`); hooks are fired by one dispatcher (`hooks.py`).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import sys
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from trainyard._logging import get_logger
from trainyard.engine import checkpoint as ckpt
from trainyard.engine import rng
from trainyard.engine.config import TrainingConfig, model_config_dict, model_config_value
from trainyard.engine.context import LocalContext, RunContext
from trainyard.engine.data import Collator, as_dataset, epoch_batches, eval_batches, make_loader
from trainyard.engine.hooks import Event, HookDispatcher, TrainingHooks
from trainyard.engine.metrics import MetricSums, evaluation_sums, exp_or_inf
from trainyard.engine.task import (
    TaskSpec,
    compute_loss,
    confirm_task,
    count_targets,
    detect_task,
    extract_logits,
    prepare_targets,
)

log = get_logger("trainyard.engine")

# Changing any of these in the middle of an epoch would change which samples the rest of
# the epoch sees, so a mid-epoch resume refuses it.
_POSITION_FIELDS = ("batch_size", "gradient_accumulation_steps", "random_seed")


@dataclass
class TrainState:
    """Where the run is. Hooks may read it; only the trainer writes it."""

    epoch: int = 1  # the epoch in progress (from 1)
    batch_in_epoch: int = 0  # micro-batches of this epoch already trained
    global_step: int = 0  # optimizer steps taken
    epoch_complete: bool = False


@dataclass
class _Run:
    """Everything one call of `train` builds; discarded when it returns."""

    ctx: RunContext
    train_ds: Any
    val_ds: Any
    model: nn.Module  # as trained (maybe DDP-wrapped / compiled)
    raw_model: nn.Module  # the user's module: what is saved and exported
    optimizer: torch.optim.Optimizer
    scaler: Any
    amp_dtype: torch.dtype | None
    collate: Collator
    run_dir: Path
    batches_per_epoch: int
    task: str | None = None
    task_reason: str = ""
    forward_kwargs: tuple[str, ...] = ()
    compile_pending: bool = False
    task_confirmed: bool = False
    history: dict[str, list] = field(default_factory=lambda: {"loss": [], "grad_norm": [], "epochs": []})
    epoch_sums: MetricSums = field(default_factory=MetricSums)
    window: dict[str, Any] | None = None  # partial accumulation restored from a checkpoint
    last_checkpoint: Path | None = None
    wandb: Any = None
    progress: Any = None


class Trainer:
    """Trains `model` on `train_data`; see `train` for what comes back."""

    def __init__(
        self,
        model: nn.Module | Callable[[], nn.Module],
        config: Any = None,
        training_config: TrainingConfig | Mapping[str, Any] | None = None,
        task_spec: TaskSpec | str | Mapping[str, Any] | None = None,
        hooks: TrainingHooks | list[TrainingHooks] | None = None,
        scaling: Any = None,
        run_config: Any = None,
    ):
        if not isinstance(model, nn.Module) and not callable(model):
            raise TypeError(
                f"model must be a torch.nn.Module or a zero-argument function returning one, got {type(model).__name__}"
            )
        if scaling is not None and not (_is_positive_int(scaling) or hasattr(scaling, "num_workers")):
            raise TypeError(
                f"scaling must be None (this process), a number of workers, or a ray.train.ScalingConfig; got {scaling!r}"
            )
        if run_config is not None and scaling is None:
            raise ValueError(
                "run_config configures a Ray Train run: pass scaling=N (or a ray.train.ScalingConfig) with it, "
                "or drop run_config to train in this process"
            )
        self.scaling = scaling
        self.run_config = run_config
        self.model_or_factory = model
        self.config = config
        self.training_config = _as_training_config(training_config)
        self.task_spec = _as_task_spec(task_spec)
        self.hooks = HookDispatcher(hooks)
        self.state = TrainState()
        self.model: nn.Module | None = model if isinstance(model, nn.Module) else None
        self.optimizer: torch.optim.Optimizer | None = None
        self._stop_reason: str | None = None

    # -- the handles hooks get ---------------------------------------------------------

    def request_stop(self, reason: str = "requested by a hook") -> None:
        """End the run after the current batch, saving a checkpoint of that position."""
        self._stop_reason = reason

    @property
    def stop_requested(self) -> bool:
        return self._stop_reason is not None

    # -- public entry point ------------------------------------------------------------

    def train(self, train_data: Any, val_data: Any = None, resume_from: str | os.PathLike | None = None) -> dict[str, Any]:
        """Train, and return the results dict.

        Keys (always present): loss_history (per optimizer step), final_loss,
        final_perplexity, training_time, metrics_summary (DataFrame, a row per epoch),
        best_epoch, grad_norm_history (pre-clip norms), amp_enabled, checkpoint_path.
        `resume_from` is a checkpoint directory, a run directory (its newest valid
        checkpoint is used) or a `ray.train.Checkpoint`. With `scaling`, the same loop runs
        in Ray Train workers and rank 0's results come back here.
        """
        if self.scaling is not None:
            from trainyard.execution.ray_train import fit  # the engine's only way to Ray

            return fit(self, train_data, val_data, resume_from)
        return self.run(LocalContext(self.training_config.device), train_data, val_data, resume_from)

    def run(self, ctx: RunContext, train_data: Any, val_data: Any = None, resume_from: Any = None) -> dict[str, Any]:
        """The loop itself, in the environment `ctx` describes."""
        self._stop_reason = None
        with _determinism(self.training_config.deterministic, ctx.device):
            start = time.perf_counter()
            run = self._setup(ctx, train_data, val_data, resume_from)
            try:
                self.hooks.fire(Event.TRAIN_BEGIN, self, run.train_ds, run.val_ds)
                while self.state.epoch <= self.training_config.epochs and not self.stop_requested:
                    self._train_epoch(run)
                results = self._results(run, time.perf_counter() - start)
                self.hooks.fire(Event.TRAIN_END, self, results)
            finally:
                if run.progress is not None:
                    run.progress.close()
                if run.wandb is not None:
                    run.wandb.finish()
        return results

    # -- setup -------------------------------------------------------------------------

    def _setup(self, ctx: RunContext, train_data: Any, val_data: Any, resume_from: Any) -> _Run:
        cfg = self.training_config
        train_ds = as_dataset(train_data, "train_data")
        if train_ds is None or len(train_ds) == 0:
            raise ValueError("train_data is empty: it needs at least one sample")
        val_ds = as_dataset(val_data, "val_data")
        if val_ds is not None and len(val_ds) == 0:
            raise ValueError("val_data is empty: pass None to train without validation")

        # The environment's checkpoint wins: after a restart it is newer than resume_from.
        resume_path = ctx.checkpoint_to_resume()
        if resume_path is None and resume_from is not None:
            resume_path = ckpt.resolve(ckpt.local_path(resume_from), warn=log.warning)
        loaded = ckpt.load(resume_path) if resume_path is not None else None
        if loaded is None:
            rng.seed_everything(cfg.random_seed)  # before the factory: model init is seeded too

        raw_model = self._build_model()
        if loaded is not None:
            _load_model_state(raw_model, loaded)
        model = ctx.prepare_model(raw_model)
        amp_dtype, scaler = _amp_setup(cfg, ctx.device)
        optimizer = _build_optimizer(raw_model, cfg)
        if loaded is not None:
            optimizer.load_state_dict(loaded.optimizer)
            if scaler is not None and loaded.extra.get("scaler"):
                scaler.load_state_dict(loaded.extra["scaler"])
        self.model, self.optimizer = raw_model, optimizer

        # DistributedSampler gives every rank ceil(n / world_size) samples.
        batches_per_epoch = math.ceil(math.ceil(len(train_ds) / ctx.world_size) / cfg.batch_size)
        run = _Run(
            ctx=ctx,
            train_ds=train_ds,
            val_ds=val_ds,
            model=model,
            raw_model=raw_model,
            optimizer=optimizer,
            scaler=scaler,
            amp_dtype=amp_dtype,
            collate=Collator(self._pad_token_id()),
            run_dir=self._run_dir(loaded),
            batches_per_epoch=batches_per_epoch,
            forward_kwargs=_accepted_kwargs(raw_model),
        )
        if cfg.compile_mode:
            run.model, run.compile_pending = _try_compile(model, cfg.compile_mode), True
        if loaded is not None:
            self._restore_position(run, loaded, len(train_ds))
            run.task_confirmed = True
            log.info("resumed from %s (epoch %d, step %d)", loaded.path, self.state.epoch, self.state.global_step)
        else:
            self.state = TrainState()
        if self.task_spec is not None:
            run.task, run.task_reason = self.task_spec.name, "given by TaskSpec"
        else:
            run.task, run.task_reason = detect_task(train_ds[0])
        if cfg.wandb_project and ctx.is_main:
            from trainyard.engine.tracking import WandbRun

            run.wandb = WandbRun(cfg.wandb_project, {"training": cfg.to_dict(), "model": model_config_dict(self.config)})
        return run

    def _build_model(self) -> nn.Module:
        if isinstance(self.model_or_factory, nn.Module):
            return self.model_or_factory
        model = self.model_or_factory()
        if not isinstance(model, nn.Module):
            raise TypeError(f"the model factory returned {type(model).__name__}, not a torch.nn.Module")
        return model

    def _pad_token_id(self) -> int | None:
        if self.task_spec is not None and self.task_spec.preprocessing_config.get("pad_token_id") is not None:
            return self.task_spec.preprocessing_config["pad_token_id"]
        return model_config_value(self.config, "pad_token_id")

    def _run_dir(self, loaded: ckpt.LoadedCheckpoint | None) -> Path:
        cfg = self.training_config
        if cfg.checkpoint_dir is not None:
            run_dir = Path(cfg.checkpoint_dir).resolve()
        elif loaded is not None:
            run_dir = loaded.path.parent.resolve()
        else:
            run_dir = Path("checkpoints", time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]).resolve()
        if loaded is None and ckpt.list_checkpoints(run_dir):
            raise ValueError(
                f"checkpoint_dir {run_dir} already holds checkpoints of an earlier run; pass "
                f"resume_from={str(run_dir)!r} to continue it, or choose a new checkpoint_dir"
            )
        return run_dir

    def _restore_position(self, run: _Run, loaded: ckpt.LoadedCheckpoint, n_train: int) -> None:
        s = loaded.state
        saved_cfg = s["training_config"]
        if not s["position"]["epoch_complete"]:
            for name in _POSITION_FIELDS:
                if saved_cfg[name] != getattr(self.training_config, name):
                    raise ValueError(
                        f"cannot resume mid-epoch from {loaded.path} with {name}={getattr(self.training_config, name)!r}: "
                        f"it was saved with {name}={saved_cfg[name]!r}, which decides the rest of the epoch's batches; "
                        f"use {name}={saved_cfg[name]!r}, or resume from an epoch-end checkpoint"
                    )
            if s["train_size"] != n_train or s["world_size"] != run.ctx.world_size:
                raise ValueError(
                    f"cannot resume mid-epoch from {loaded.path}: it was saved with {s['train_size']} training "
                    f"samples on {s['world_size']} worker(s), this run has {n_train} on {run.ctx.world_size}"
                )
        self.state = TrainState(**s["position"])
        if self.state.epoch_complete:
            self.state = TrainState(epoch=self.state.epoch + 1, global_step=self.state.global_step)
        run.history = s["history"]
        run.epoch_sums = MetricSums(**s["epoch_sums"])
        if loaded.extra.get("grads") is not None:
            for p, g in zip(run.raw_model.parameters(), loaded.extra["grads"]):
                p.grad = None if g is None else g.to(p.device)
            run.window = s["window"]
        if self.task_spec is None and s.get("task_spec"):
            self.task_spec = TaskSpec.from_dict(s["task_spec"])
        run.last_checkpoint = loaded.path
        # Last, so nothing above (model construction above all) disturbs the streams.
        rng.restore(loaded.extra["rng"], s["rng"])

    # -- one epoch -----------------------------------------------------------------------

    def _train_epoch(self, run: _Run) -> None:
        cfg, state, ctx = self.training_config, self.state, run.ctx
        epoch_start = time.perf_counter()
        if state.batch_in_epoch == 0:
            run.epoch_sums = MetricSums()
            self.hooks.fire(Event.EPOCH_BEGIN, self, state.epoch)
        batches = epoch_batches(len(run.train_ds), cfg.batch_size, state.epoch - 1, cfg.random_seed, ctx.rank, ctx.world_size, True)
        loader = iter(make_loader(run.train_ds, batches[state.batch_in_epoch :], run.collate, cfg.num_workers, ctx.device.type == "cuda"))
        run.model.train()
        self._open_progress(run, len(batches))
        accum = cfg.gradient_accumulation_steps
        while state.batch_in_epoch < len(batches) and not self.stop_requested:
            window_end = min((state.batch_in_epoch // accum + 1) * accum, len(batches))
            window = [next(loader) for _ in range(window_end - state.batch_in_epoch)]
            self._window(run, window)
        if state.batch_in_epoch < len(batches):  # stopped inside the epoch
            return
        train_sums = run.epoch_sums.reduced(ctx)
        row = {"epoch": state.epoch, **train_sums.metrics("train", run.task)}
        if run.val_ds is not None:
            val_metrics = self._evaluate(run)
            row.update(val_metrics)
            self.hooks.fire(Event.VALIDATION_END, self, state.epoch, val_metrics)
        epoch_norms = run.history["grad_norm"][-math.ceil(len(batches) / accum) :]
        row["train/learning_rate"] = run.optimizer.param_groups[0]["lr"]
        row["train/grad_norm"] = sum(epoch_norms) / len(epoch_norms) if epoch_norms else float("nan")
        row["epoch_time"] = time.perf_counter() - epoch_start
        run.history["epochs"].append(row)
        state.epoch_complete = True
        self._checkpoint(run, row)
        if run.wandb is not None:
            run.wandb.log({k: v for k, v in row.items() if k != "epoch"}, step=state.global_step, epoch=state.epoch)
        self.hooks.fire(Event.EPOCH_END, self, state.epoch, row)
        self._log_epoch(run, row)
        self.state = TrainState(epoch=state.epoch + 1, global_step=state.global_step)

    def _window(self, run: _Run, window: list[dict[str, torch.Tensor]]) -> None:
        """One optimizer step: the micro-batches of an accumulation window."""
        state, ctx = self.state, run.ctx
        targets = [prepare_targets(run.task, b, run.collate.pad_token_id) for b in window]
        counts = [count_targets(run.task, t) for t in targets]
        if run.window is not None:  # resuming inside this window
            window_count, window_loss = run.window["count"], run.window["loss"]
            run.window = None
        else:
            # Normalise by the targets of the whole step, over all ranks: batch b x accum k
            # then equals batch b*k, and N workers equal one with N times the batch.
            (window_count,) = ctx.all_reduce_sum([sum(counts)])
            window_loss = 0.0
        scale = ctx.world_size / max(window_count, 1)
        for i, (batch, target, count) in enumerate(zip(window, targets, counts)):
            batch = {k: v.to(ctx.device, non_blocking=True) for k, v in batch.items()}
            target = target.to(ctx.device, non_blocking=True)
            self.hooks.fire(Event.BATCH_BEGIN, self, batch)
            last = i == len(window) - 1
            with contextlib.nullcontext() if last else ctx.no_sync(run.model):
                stats, logits, output = self._micro_step(run, batch, target, scale)
            window_loss += float(stats.loss_sum.detach())
            run.epoch_sums.add(stats, count)
            state.batch_in_epoch += 1
            if run.progress is not None:
                run.progress.update(1)
            if last:
                (window_loss,) = ctx.all_reduce_sum([window_loss])
                self._optimizer_step(run, window_loss / max(window_count, 1))
            outputs = {"loss": stats.loss_sum.detach() / max(count, 1), "logits": logits.detach(), "model_output": output}
            self.hooks.fire(Event.BATCH_END, self, batch, outputs)
            if self.stop_requested and not last:
                run.window = {"count": window_count, "loss": window_loss}
                self._checkpoint(run, self._step_metrics(None))
                return
        every = self.training_config.checkpoint_every_n_steps
        mid_epoch = state.batch_in_epoch < run.batches_per_epoch
        if mid_epoch and (self.stop_requested or (every and state.global_step % every == 0)):
            self._checkpoint(run, self._step_metrics(run.history["loss"][-1]))

    def _step_metrics(self, loss: float | None) -> dict[str, Any]:
        return {"epoch": self.state.epoch, "global_step": self.state.global_step, "train/step_loss": loss}

    def _micro_step(self, run: _Run, batch: dict, target: torch.Tensor, scale: float):
        if run.compile_pending:
            return self._first_compiled_step(run, batch, target, scale)
        device_type = run.ctx.device.type
        with torch.autocast(device_type, dtype=run.amp_dtype or torch.float32, enabled=run.amp_dtype is not None):
            output = run.model(batch["input_ids"], **{k: batch[k] for k in run.forward_kwargs if k in batch})
        logits = extract_logits(output)
        if not run.task_confirmed:
            self._confirm_task(run, logits)
        stats = compute_loss(run.task, logits, target)
        loss = stats.loss_sum * scale
        (run.scaler.scale(loss) if run.scaler is not None else loss).backward()
        return stats, logits, output

    def _first_compiled_step(self, run: _Run, batch: dict, target: torch.Tensor, scale: float):
        # torch.compile fails lazily, at the first call: try it once, fall back to eager.
        run.compile_pending = False
        rng_state = torch.get_rng_state()
        try:
            return self._micro_step(run, batch, target, scale)
        except Exception as e:  # noqa: BLE001 - any compiler failure means "no compile here"
            warnings.warn(
                f"torch.compile(mode={self.training_config.compile_mode!r}) is unavailable here "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); training in eager mode",
                RuntimeWarning,
                stacklevel=2,
            )
            torch.set_rng_state(rng_state)
            run.optimizer.zero_grad(set_to_none=True)
            run.model = getattr(run.model, "_orig_mod", run.model)
            return self._micro_step(run, batch, target, scale)

    def _confirm_task(self, run: _Run, logits: torch.Tensor) -> None:
        explicit = self.task_spec is not None
        run.task, run.task_reason = confirm_task(run.task, logits, run.task_reason, explicit)
        run.task_confirmed = True
        if not explicit:
            if run.ctx.is_main:
                log.info("task_spec=None: training as %r (%s)", run.task, run.task_reason)
            self.task_spec = TaskSpec(name=run.task)

    def _optimizer_step(self, run: _Run, loss: float) -> None:
        cfg, state = self.training_config, self.state
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
            group["lr"] = self._learning_rate(run, state.global_step)
        if run.scaler is not None:
            run.scaler.step(run.optimizer)
            run.scaler.update()
        else:
            run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        state.global_step += 1
        run.history["loss"].append(loss)
        run.history["grad_norm"].append(norm)
        if run.progress is not None:
            run.progress.set_postfix(loss=f"{loss:.4f}", refresh=False)
        if run.wandb is not None:
            run.wandb.log({"train/step_loss": loss, "train/grad_norm": norm, "train/learning_rate": run.optimizer.param_groups[0]["lr"]}, step=state.global_step)

    def _learning_rate(self, run: _Run, step: int) -> float:
        """Linear warmup, then cosine decay to min_lr_ratio * learning_rate."""
        cfg = self.training_config
        if not cfg.use_lr_schedule:
            return cfg.learning_rate
        if step < cfg.warmup_steps:
            return cfg.learning_rate * (step + 1) / cfg.warmup_steps
        total = cfg.epochs * math.ceil(run.batches_per_epoch / cfg.gradient_accumulation_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
        floor = cfg.min_lr_ratio * cfg.learning_rate
        return floor + (cfg.learning_rate - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    # -- evaluation ----------------------------------------------------------------------

    def _evaluate(self, run: _Run) -> dict[str, float]:
        cfg, ctx = self.training_config, run.ctx
        batches = eval_batches(len(run.val_ds), cfg.batch_size, ctx.rank, ctx.world_size)
        loader = make_loader(run.val_ds, batches, run.collate, cfg.num_workers, ctx.device.type == "cuda")
        sums = evaluation_sums(run.model, loader, run.task, run.collate.pad_token_id, ctx.device, run.forward_kwargs, run.amp_dtype)
        return sums.reduced(ctx).metrics("val", run.task)

    # -- checkpoints ---------------------------------------------------------------------

    def _checkpoint(self, run: _Run, metrics: dict[str, Any]) -> None:
        """Save the position (main rank) and report it; every rank reports, the same number of times."""
        path = self._save_checkpoint(run) if run.ctx.is_main else None
        run.ctx.report(metrics, path)
        if path is not None:
            self.hooks.fire(Event.CHECKPOINT, self, str(path))

    def _save_checkpoint(self, run: _Run) -> Path:
        cfg, state = self.training_config, self.state
        rng_tensors, rng_plain = rng.capture()
        grads = None
        if run.window is not None:  # saved mid-accumulation: the gradients so far are state
            grads = [None if p.grad is None else p.grad.detach().cpu() for p in run.raw_model.parameters()]
        extra = {"scaler": run.scaler.state_dict() if run.scaler is not None else None, "rng": rng_tensors, "grads": grads}
        meta = {
            "position": vars(state).copy(),
            "epoch_sums": vars(run.epoch_sums).copy(),
            "window": run.window,
            "history": run.history,
            "rng": rng_plain,
            "training_config": cfg.to_dict(),
            "task_spec": self.task_spec.to_dict() if self.task_spec else TaskSpec(name=run.task).to_dict(),
            "model_config": model_config_dict(self.config),
            "train_size": len(run.train_ds),
            "world_size": run.ctx.world_size,
        }
        name = ckpt.checkpoint_name(state.epoch, state.batch_in_epoch)
        path = ckpt.save(run.run_dir, name, run.raw_model.state_dict(), run.optimizer.state_dict(), extra, meta)
        run.last_checkpoint = path
        ckpt.prune(run.run_dir, cfg.keep_last_n_checkpoints, protect=path)
        return path

    # -- results and output --------------------------------------------------------------

    def _results(self, run: _Run, elapsed: float) -> dict[str, Any]:
        import pandas as pd

        rows = run.history["epochs"]
        summary = pd.DataFrame(rows, columns=_summary_columns(rows, run.task))
        key = "val/loss" if run.val_ds is not None else "train/loss"
        if rows:
            final_loss = rows[-1][key]
            losses = [r[key] for r in rows]
            best_epoch = rows[min(range(len(rows)), key=lambda i: (math.isnan(losses[i]), losses[i]))]["epoch"]
        else:  # stopped before the first epoch ended
            sums = run.epoch_sums.reduced(run.ctx)
            final_loss = sums.loss / sums.count if sums.count else float("nan")
            best_epoch = 0
        results = {
            "loss_history": list(run.history["loss"]),
            "final_loss": float(final_loss),
            "final_perplexity": exp_or_inf(final_loss),
            "training_time": elapsed,
            "metrics_summary": summary,
            "best_epoch": int(best_epoch),
            "grad_norm_history": list(run.history["grad_norm"]),
            "amp_enabled": run.amp_dtype is not None,
            "checkpoint_path": str(run.last_checkpoint) if run.last_checkpoint else None,
            "run_dir": str(run.run_dir),
            "task": run.task,
            "global_step": self.state.global_step,
            "stopped_early": self._stop_reason,
        }
        if self.training_config.export_bundle and run.ctx.is_main:
            from trainyard.engine.export import export_bundle

            results["export_path"] = str(export_bundle(self, run, results))
        return results

    def _open_progress(self, run: _Run, total: int) -> None:
        if run.progress is not None:
            run.progress.close()
            run.progress = None
        if run.ctx.is_main and sys.stderr.isatty() and log.isEnabledFor(20):
            from tqdm.auto import tqdm

            run.progress = tqdm(
                total=total, initial=self.state.batch_in_epoch, desc=f"epoch {self.state.epoch}/{self.training_config.epochs}", leave=False, dynamic_ncols=True
            )

    def _log_epoch(self, run: _Run, row: dict[str, Any]) -> None:
        if not run.ctx.is_main:
            return
        shown = [k for k in row if k not in ("epoch", "epoch_time", "train/perplexity", "val/perplexity", "train/grad_norm")]
        parts = [f"{k} {row[k]:.4g}" for k in shown if isinstance(row[k], float) and not math.isnan(row[k])]
        log.info("epoch %d/%d | %s | %.1fs", row["epoch"], self.training_config.epochs, " | ".join(parts), row["epoch_time"])


# -- helpers -------------------------------------------------------------------------------


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _as_training_config(value: Any) -> TrainingConfig:
    if value is None:
        return TrainingConfig()
    if isinstance(value, TrainingConfig):
        return value
    if isinstance(value, Mapping):
        return TrainingConfig.from_dict(value)
    raise TypeError(f"training_config must be a TrainingConfig (or a dict of its fields), got {type(value).__name__}")


def _as_task_spec(value: Any) -> TaskSpec | None:
    if value is None or isinstance(value, TaskSpec):
        return value
    if isinstance(value, str):
        return TaskSpec(name=value)
    if isinstance(value, Mapping):
        return TaskSpec.from_dict(value)
    raise TypeError(f"task_spec must be a TaskSpec, a task name or None, got {type(value).__name__}")


def _accepted_kwargs(model: nn.Module) -> tuple[str, ...]:
    """Optional inputs the model's forward takes by name (e.g. attention_mask)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return ()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return ("attention_mask",)
    return tuple(k for k in ("attention_mask",) if k in params)


def _build_optimizer(model: nn.Module, cfg: TrainingConfig) -> torch.optim.Optimizer:
    # Weight decay on matrices only (embeddings and linear weights), not biases or norms.
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (all have requires_grad=False)")
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.learning_rate)


def _amp_setup(cfg: TrainingConfig, device: torch.device) -> tuple[torch.dtype | None, Any]:
    if not cfg.use_amp:
        return None, None
    if device.type == "cuda":
        if cfg.amp_dtype == "bfloat16" or (cfg.amp_dtype is None and torch.cuda.is_bf16_supported()):
            return torch.bfloat16, None
        return torch.float16, torch.amp.GradScaler("cuda")
    if device.type == "cpu":
        return (torch.float16 if cfg.amp_dtype == "float16" else torch.bfloat16), None
    return (torch.bfloat16 if cfg.amp_dtype == "bfloat16" else torch.float16), None


def _try_compile(model: nn.Module, mode: str) -> nn.Module:
    try:
        return torch.compile(model, mode=mode)
    except Exception as e:  # noqa: BLE001
        warnings.warn(f"torch.compile(mode={mode!r}) is unavailable here ({e}); training in eager mode", RuntimeWarning, stacklevel=3)
        return model


def _load_model_state(model: nn.Module, loaded: ckpt.LoadedCheckpoint) -> None:
    try:
        model.load_state_dict(loaded.model)
    except RuntimeError as e:
        raise ckpt.CheckpointError(f"checkpoint {loaded.path} does not fit this model: {e}") from e


@contextlib.contextmanager
def _determinism(enabled: bool, device: torch.device):
    if not enabled:
        yield
        return
    previous = torch.are_deterministic_algorithms_enabled()
    previous_benchmark = torch.backends.cudnn.benchmark
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
        torch.backends.cudnn.benchmark = previous_benchmark


def _summary_columns(rows: list[dict], task: str) -> list[str]:
    base = ["epoch", "train/loss", "val/loss", "train/accuracy", "val/accuracy", "train/perplexity", "val/perplexity", "train/learning_rate"]
    extra = [k for r in rows for k in r if k not in base]
    return base + list(dict.fromkeys(extra))
