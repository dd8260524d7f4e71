"""`TrainingLoop`: the engine's one training loop, in whatever run context it is handed.

    results = TrainingLoop(model, config, training_config).train(train_data, val_data)   # this process
    results = TrainingLoop(model, config, training_config).run(ctx, train_data, val_data)  # any RunContext

The loop, top to bottom: `run` -> `_setup` (setup.py: data, model, optimizer, AMP, resume)
-> per epoch `_train_epoch` -> per accumulation window `_window` -> `_micro_step` (forward,
loss, backward) and `step.optimizer_step` -> `_validate` (evaluation.py, also every
`eval_every_n_steps`) and `_watch` (early_stop.py) -> `_checkpoint` (state.py) ->
`results.build_results`. What changes as it runs is owned by the parts of its `Run`: the
model call (compiled or eager), the task, the progress, the telemetry; when it saves is the
`SavePolicy`'s. It talks to where it runs only through the run context (`context.py`) and
to observers only through hooks (`hooks.py`, `observers.py`). Running on Ray (`scaling=`)
is the business of the public `trainyard.Trainer`, a layer above this one, which extends
this class.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from trainyard._logging import get_logger, show_logs
from trainyard.engine import early_stop, evaluation, rng, run_folder, setup, step
from trainyard.engine.batching import plan_batches
from trainyard.engine.checkpoint import LoadedCheckpoint
from trainyard.engine.config import TrainingConfig, as_training_config
from trainyard.engine.context import LocalContext, RunContext
from trainyard.engine.data.collate import Collator
from trainyard.engine.data.feed import WindowFeed, make_loader, to_device, window_sizes
from trainyard.engine.data.order import batches_per_epoch, iter_epoch_batches
from trainyard.engine.early_stop import EarlyStopping
from trainyard.engine.hooks import Event, HookDispatcher, Observer, TrainingHooks
from trainyard.engine.metrics import MetricSums
from trainyard.engine.model_config import model_config_value
from trainyard.engine.observers import builtin_observers
from trainyard.engine.results import build_results
from trainyard.engine.state import Run, SavePolicy, TrainState, check_resumable, checkpoint_position, describe_changes, restore
from trainyard.engine.task import TaskSpec, as_task_spec, choose_task, extract_logits
from trainyard.engine.telemetry import RunTelemetry, compute_dtype, peak_flops

log = get_logger("trainyard.engine")


class TrainingLoop:
    """Trains `model` on `train_data`; see `train` for what comes back. Hooks receive it as
    their `trainer` argument."""

    def __init__(self, model: nn.Module | Callable[[], nn.Module], config: Any = None, training_config: TrainingConfig | Mapping[str, Any] | None = None,
                 task_spec: TaskSpec | str | Mapping[str, Any] | None = None, hooks: TrainingHooks | list[TrainingHooks] | None = None,
                 *, observers: Sequence[Observer] = ()):  # fmt: skip
        if not isinstance(model, nn.Module) and not callable(model):
            raise TypeError(f"model must be a torch.nn.Module or a zero-argument function returning one, got {type(model).__name__}")
        self.model_or_factory = model
        self.config = config
        self.training_config = as_training_config(training_config)
        self.task_spec = as_task_spec(task_spec)
        # `observers`: a layer above adds its own after the built-in ones (the export bundle)
        self.hooks = HookDispatcher(hooks, observers=[*builtin_observers(self.training_config), *observers])
        self.state = TrainState()
        self.model: nn.Module | None = model if isinstance(model, nn.Module) else None
        self.optimizer: torch.optim.Optimizer | None = None
        self.context: RunContext | None = None  # where the current run happens
        self.batches_per_epoch = 0  # micro-batches per epoch on this rank
        self.step_metrics: dict[str, float] = {}  # the last optimizer step's loss, grad norm, lr
        self.saves = SavePolicy(self.training_config.checkpoint_every_n_steps)
        self.tokenizer: Any = None  # travels with the export bundle when set (experiments set it)
        self.run_name: str | None = None  # set when a run starts: its name on every output (trackers too)
        self._stop_signal, self._signalled = None, False  # this rank's stop_signal() at the last step; whether one ended the run

    # -- the handles hooks get ---------------------------------------------------------

    def request_stop(self, reason: str = "requested by a hook") -> None:
        """End the run after the current batch, saving a checkpoint of that position."""
        self.saves.request_stop(reason)

    @property
    def stop_requested(self) -> bool:
        return self.saves.stopping

    @property
    def pad_token_id(self) -> int | None:
        """The TaskSpec's `pad_token_id`, else the model config's."""
        if self.task_spec is not None and self.task_spec.preprocessing_config.get("pad_token_id") is not None:
            return self.task_spec.preprocessing_config["pad_token_id"]
        return model_config_value(self.config, "pad_token_id")

    # -- entry points --------------------------------------------------------------------

    def train(self, train_data: Any, val_data: Any = None, resume_from: str | os.PathLike | None = None) -> dict[str, Any]:
        """Train in this process and return the results dict.

        Keys (always present): loss_history (per optimizer step), final_loss,
        final_perplexity, training_time, metrics_summary (DataFrame, a row per epoch),
        best_epoch, grad_norm_history (pre-clip norms), amp_enabled, checkpoint_path.
        `resume_from` is a checkpoint directory, a run directory (its newest valid
        checkpoint is used) or a `ray.train.Checkpoint`.
        """
        return self.run(LocalContext(self.training_config.device), train_data, val_data, resume_from)

    def run(self, ctx: RunContext, train_data: Any, val_data: Any = None, resume_from: Any = None) -> dict[str, Any]:
        """The loop itself, in the environment `ctx` describes."""
        show_logs()
        setup.check_context(self.training_config, ctx)
        self.saves = SavePolicy(self.training_config.checkpoint_every_n_steps)
        self.context, self._signalled = ctx, False
        self._claimed = None  # the run folder this run holds, released however the run ends
        with setup.determinism(self.training_config.deterministic, ctx.device):
            start = time.perf_counter()
            try:
                run = self._setup(ctx, train_data, val_data, resume_from)
                self.hooks.fire(Event.TRAIN_BEGIN, self, run.train_ds, run.val_ds)
                while self.state.epoch <= self.training_config.epochs and not self.stop_requested:
                    self._train_epoch(run)
                results = build_results(run, self.state, time.perf_counter() - start, self.saves.stop_reason)
                self.hooks.fire(Event.TRAIN_END, self, results)
                if self._signalled:
                    ctx.stopped_for_signal()
            finally:
                self.hooks.close()
                if self._claimed is not None:
                    run_folder.release(self._claimed)
        return results

    # -- setup -------------------------------------------------------------------------

    def _setup(self, ctx: RunContext, train_data: Any, val_data: Any, resume_from: Any) -> Run:
        cfg = self.training_config
        train_ds, val_ds = setup.datasets(train_data, val_data, ctx, cfg)
        early_stop.check_measurable(cfg, val_ds is not None)
        source = setup.resume_source(ctx, resume_from)
        if source is None:
            rng.seed_everything(cfg.random_seed)  # before the factory: model init is seeded too
        raw_model = setup.build_model(self.model_or_factory)
        loaded = setup.checkpoint_to_load(source, raw_model, warn=log.warning)
        parts = setup.build_parts(raw_model, cfg, ctx, loaded)
        self.model, self.optimizer = parts.raw_model, parts.optimizer
        plan = plan_batches(cfg, ctx.world_size, loaded.state if loaded is not None else None)
        self.batches_per_epoch = batches_per_epoch(len(train_ds), plan.micro_batch, ctx.world_size)
        if loaded is not None and self.task_spec is None and loaded.state.get("task_spec"):
            self.task_spec = TaskSpec.from_dict(loaded.state["task_spec"])
        task = choose_task(self.task_spec, train_ds[0])
        self._claimed = setup.run_directory(ctx, cfg, loaded)
        self.run_name = ctx.run_name or self._claimed.name
        run = Run(
            ctx=ctx, train_ds=train_ds, val_ds=val_ds, raw_model=parts.raw_model, optimizer=parts.optimizer, scaler=parts.scaler,
            amp_dtype=parts.amp_dtype, collate=Collator(self.pad_token_id), run_dir=self._claimed,
            batches_per_epoch=self.batches_per_epoch, plan=plan, forward_kwargs=setup.forward_kwargs(parts.raw_model),
            trainable=[p for p in parts.raw_model.parameters() if p.requires_grad], check_vocab=setup.check_token_ids(parts.raw_model, self.config, train_ds, val_ds, task.name),
            call=setup.ModelCall(parts.model, cfg.compile_mode),
            task=task, telemetry=RunTelemetry(ctx.device, peak_flops(ctx.device, compute_dtype(ctx.device, parts.amp_dtype), cfg.peak_flops)),
        )
        self.state = self._resume(run, loaded) if loaded is not None else TrainState()
        run.progress.watch = EarlyStopping.from_config(cfg, loaded.state.get("early_stopping") if loaded is not None else None)
        if run.progress.watch is not None and run.progress.watch.reason():  # a run that stopped early stays stopped
            (log.info if ctx.is_main else log.debug)("%s: nothing left to do (raise early_stopping_patience to train on)", run.progress.watch.reason())
            self.saves.request_stop(run.progress.watch.reason())
        return run

    def _resume(self, run: Run, loaded: LoadedCheckpoint) -> TrainState:
        """Continue from `loaded` (its weights are in already): the position, sums and RNG
        streams, after checking the run can; says what changed since it was saved."""
        cfg = self.training_config
        check_resumable(loaded, cfg, len(run.train_ds), run.plan)
        state = restore(run, loaded)  # last: it restores the RNG streams
        run.task.confirmed = True
        say = log.info if run.ctx.is_main else log.debug  # every rank resumes; one says so
        if state.epoch > cfg.epochs:
            say("%s is the end of a finished run: all %d epochs are trained, nothing is left to do (raise epochs to train further)", loaded.path, cfg.epochs)
        else:
            say("resumed from %s (epoch %d, step %d)", run.ctx.describe(loaded.path), state.epoch, state.global_step)
        for change in describe_changes(loaded, cfg, len(run.train_ds), run.plan):
            say("changed since that checkpoint: %s", change)
        return state

    # -- one epoch -----------------------------------------------------------------------

    def _train_epoch(self, run: Run) -> None:
        cfg, state, ctx = self.training_config, self.state, run.ctx
        epoch_start = time.perf_counter()
        if state.batch_in_epoch == 0:
            run.progress.epoch_sums = MetricSums()
            self.hooks.fire(Event.EPOCH_BEGIN, self, state.epoch)
        run.progress.start_epoch(ctx.device)
        run.telemetry.start_epoch()
        total = run.batches_per_epoch
        batches = iter_epoch_batches(
            len(run.train_ds), run.plan.micro_batch, state.epoch - 1, cfg.random_seed, ctx.rank, ctx.world_size, cfg.shuffle_chunk_rows, start=state.batch_in_epoch
        )
        loader = make_loader(run.train_ds, batches, run.collate, cfg.num_workers, ctx.device.type == "cuda")
        move = lambda b: to_device(b, ctx.device, run.task.name, run.collate.pad_token_id, run.check_vocab)  # noqa: E731 - the task as confirmed
        feed = WindowFeed(loader, window_sizes(state.batch_in_epoch, total, run.plan.accumulation), move)
        run.call.model.train()
        while state.batch_in_epoch < total and not self.saves.stopping:
            self._window(run, feed)
        if state.batch_in_epoch < total:  # stopped inside the epoch
            return
        run.telemetry.waited(feed.waited)
        row = {"epoch": state.epoch, **run.progress.sync().reduced(ctx).metrics("train", run.task.name, run.task.answers)}
        if run.val_ds is not None:
            row.update(self._validate(run))
        epoch_norms = run.progress.history["grad_norm"][-math.ceil(total / run.plan.accumulation) :]
        row["train/learning_rate"] = run.optimizer.param_groups[0]["lr"]
        row["train/grad_norm"] = sum(epoch_norms) / len(epoch_norms) if epoch_norms else float("nan")
        row.update(run.telemetry.summary(ctx))
        row["epoch_time"] = time.perf_counter() - epoch_start
        run.progress.history["epochs"].append(row)
        state.epoch_complete = True
        self._watch(run, row)
        self._checkpoint(run, row)
        self.hooks.fire(Event.EPOCH_END, self, state.epoch, row)
        self.state = TrainState(epoch=state.epoch + 1, global_step=state.global_step)

    def _window(self, run: Run, feed: WindowFeed) -> None:
        """One optimizer step: the micro-batches of an accumulation window. Losses and
        counts stay on the device; the host reads them once, at the step."""
        state, ctx, progress = self.state, run.ctx, run.progress
        window = feed.next_window()
        if progress.window is not None:  # resuming inside this window
            window_count, window_loss = step.scalar(run, progress.window["count"]), step.scalar(run, progress.window["loss"])
            progress.window = None
        else:
            # Normalise by the targets of the whole step, over all ranks: batch b x accum k
            # then equals batch b*k, and N workers equal one with N times the batch. The
            # count was summed with the previous step's loss where that step prefetched it.
            summed = feed.summed_count
            window_count = summed if summed is not None else ctx.sum_tensor(step.scalar(run, sum(b.count for b in window)))
            window_loss = step.scalar(run, 0.0)
        feed.summed_count = None
        scale = ctx.world_size / window_count.clamp(min=1)
        score = step.measures_predictions(self.training_config, state.batch_in_epoch, run.plan.accumulation)
        run.telemetry.count_flops(run.raw_model, window[0].tensors, run.forward_kwargs, run.autocast, ctx.shards_state)
        run.telemetry.window_begins(compiling=run.call.pending)
        for i, batch in enumerate(window):
            self.hooks.fire(Event.BATCH_BEGIN, self, batch.tensors)
            last = i == len(window) - 1
            with contextlib.nullcontext() if last else ctx.no_sync(run.call.model):
                stats, logits, output = self._micro_step(run, batch.tensors, batch.targets, scale, score)
            window_loss += stats.loss_sum.detach()
            progress.running.add(stats, batch.count)
            run.telemetry.batch(batch.samples, batch.count, batch.input_tokens, batch.seq_len)
            state.batch_in_epoch += 1
            if last:
                feed.prefetch()  # the next window is collated and copied while the device computes
                self._stop_signal = run.ctx.stop_signal()
                loss, stops = step.reduce_window(run, feed, window_loss, self._stop_signal is not None)
                self._optimizer_step(run, loss / window_count.clamp(min=1), stops)
                if evaluation.due_inside_epoch(self.training_config, state, run.batches_per_epoch):
                    self._watch(run, self._validate(run))
            outputs = {"loss": stats.loss_sum.detach() / max(batch.count, 1), "logits": logits.detach(), "model_output": output}
            self.hooks.fire(Event.BATCH_END, self, batch.tensors, outputs)
            if self.saves.cuts_window(last):
                step.check_cut_window(run, state, window_loss)
                count, loss = torch.stack([window_count, window_loss]).tolist()
                progress.window = {"count": count, "loss": loss}
                self._checkpoint(run, self._position_metrics(None))
                return
        if self.saves.saves_after_step(state, run.batches_per_epoch):
            self._checkpoint(run, self._position_metrics(progress.history["loss"][-1]))

    def _micro_step(self, run: Run, batch: dict, target: torch.Tensor, scale: float, score: bool):
        """Forward, loss (a sum, scaled to the step's target count; `score`: and accuracy's counts), backward."""
        if run.call.pending:
            return self._first_compiled_step(run, batch, target, scale, score)
        with run.autocast():
            output = run.call.model(batch["input_ids"], **{k: batch[k] for k in run.forward_kwargs if k in batch})
        logits = extract_logits(output)
        if not run.task.confirmed:
            self._confirm_task(run, logits)
        stats = run.call.loss_fn(run.task.name, logits, target, score)
        loss = stats.loss_sum * scale
        (run.scaler.scale(loss) if run.scaler is not None else loss).backward()
        return stats, logits, output

    def _first_compiled_step(self, run: Run, batch: dict, target: torch.Tensor, scale: float, score: bool):
        # torch.compile fails lazily, at the first call: try it once, fall back to eager.
        run.call.pending = False
        rng_state = torch.get_rng_state()
        try:
            return self._micro_step(run, batch, target, scale, score)
        except Exception as e:  # noqa: BLE001 - any compiler failure means "no compile here"
            run.call.fall_back(e)
            torch.set_rng_state(rng_state)
            run.optimizer.zero_grad(set_to_none=True)
            return self._micro_step(run, batch, target, scale, score)

    def _confirm_task(self, run: Run, logits: torch.Tensor) -> None:
        run.task.confirm(logits)
        if not run.task.explicit:
            if run.ctx.is_main:
                log.info("task_spec=None: training as %r (%s)", run.task.name, run.task.reason)
            self.task_spec = TaskSpec(name=run.task.name)

    def _optimizer_step(self, run: Run, loss: torch.Tensor, stops: torch.Tensor) -> None:
        state = self.state
        loss_value, norm, stopping = step.optimizer_step(run, self.training_config, state, loss, stops)
        state.global_step += 1
        if stopping and not self.saves.stopping:  # every rank read the same votes: all stop at this step
            self._signalled = True
            reason = self._stop_signal or "a worker's machine is being taken away (another rank's stop signal)"
            if run.ctx.is_main:
                log.warning("%s: saving a checkpoint at epoch %d, step %d, to resume from there", reason, state.epoch, state.global_step)
            self.saves.request_stop(reason)
        for key, value in (("loss", loss_value), ("grad_norm", norm), ("learning_rate", run.optimizer.param_groups[0]["lr"])):
            run.progress.history[key].append(value)
        step_time = run.telemetry.step_end()
        self.step_metrics = {
            "train/step_loss": loss_value, "train/grad_norm": norm, "train/learning_rate": run.optimizer.param_groups[0]["lr"],
            "time/step_ms": 1000 * step_time,
        }
        self.hooks.fire(Event.STEP_END, self, state.global_step, self.step_metrics)

    def _position_metrics(self, loss: float | None) -> dict[str, Any]:
        return {"epoch": self.state.epoch, "global_step": self.state.global_step, "train/step_loss": loss}

    # -- evaluation and checkpoints ------------------------------------------------------

    def _validate(self, run: Run) -> dict[str, float]:
        """Evaluate on the validation data, record it (history's `evals`) and tell the hooks."""
        metrics = evaluation.evaluate(run, self.training_config)
        run.progress.history["evals"].append({"epoch": self.state.epoch, "global_step": self.state.global_step, **metrics})
        self.hooks.fire(Event.VALIDATION_END, self, self.state.epoch, metrics)
        return metrics

    def _watch(self, run: Run, metrics: dict[str, Any]) -> None:
        """Early stopping's look at an evaluation: a stop when its patience is spent (every
        rank decides alike: the metrics are reduced over ranks)."""
        watch = run.progress.watch
        if watch is None:
            return
        early_stop.check_metric_measured(self.training_config, metrics)
        reason = watch.update(metrics, self.state.epoch, self.state.global_step)
        if reason is not None:
            if run.ctx.is_main:
                log.info("%s: stopping at epoch %d, step %d", reason, self.state.epoch, self.state.global_step)
            self.saves.request_stop(reason)

    def _checkpoint(self, run: Run, metrics: dict[str, Any]) -> None:
        """Save the position and report it; every rank reports, the same number of times."""
        path = checkpoint_position(run, self.state, self.training_config, self.task_spec, self.config)
        run.ctx.report(metrics, path)
        if path is not None and run.ctx.is_main:
            self.hooks.fire(Event.CHECKPOINT, self, str(path))
