"""The platform's own observers: hooks on the same dispatcher as the user's.

    ProgressBar   a tqdm bar per epoch, on a terminal only, main rank
    EpochLog      one line per epoch, main rank
    WandbLogger   W&B, when `TrainingConfig.wandb_project` is set (main rank)
    ExportBundle  the export bundle at the end, when `export_bundle=True` (export.py)

A new tracker is one more `Observer` here and one line in `builtin_observers`; the loop
does not change. Observers read only what every hook may read (`trainer.state`,
`trainer.step_metrics`, `trainer.context`, ...), and only on the main rank do they print
or log anything.
"""

from __future__ import annotations

import logging
import math
import sys
from typing import Any

from trainyard._logging import get_logger
from trainyard.engine.config import TrainingConfig, model_config_dict
from trainyard.engine.hooks import Observer

log = get_logger("trainyard.engine")

# Columns of an epoch row that the log line leaves out (they are in metrics_summary).
_NOT_LOGGED = ("epoch", "epoch_time", "train/perplexity", "val/perplexity", "train/grad_norm")


def builtin_observers(cfg: TrainingConfig) -> list[Observer]:
    """The observers a run with `cfg` gets, in firing order."""
    observers: list[Observer] = [ProgressBar(), EpochLog()]
    if cfg.wandb_project:
        observers.append(WandbLogger(cfg.wandb_project))
    if cfg.export_bundle:
        from trainyard.engine.export import ExportBundle

        observers.append(ExportBundle())
    return observers


class ProgressBar(Observer):
    """tqdm over the epoch's micro-batches, when stderr is a terminal and INFO is shown."""

    def __init__(self):
        self.bar: Any = None
        self.epoch: int | None = None
        self.step = -1

    def on_batch_begin(self, trainer, batch) -> None:
        state = trainer.state
        if self.epoch == state.epoch or not _shows_progress(trainer):
            return
        from tqdm.auto import tqdm

        self.close()
        self.epoch, self.step = state.epoch, state.global_step
        self.bar = tqdm(
            total=trainer.batches_per_epoch, initial=state.batch_in_epoch, desc=f"epoch {state.epoch}/{trainer.training_config.epochs}",
            leave=False, dynamic_ncols=True,
        )

    def on_batch_end(self, trainer, batch, outputs) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        if trainer.state.global_step != self.step:
            self.step = trainer.state.global_step
            self.bar.set_postfix(loss=f"{trainer.step_metrics['train/step_loss']:.4f}", refresh=False)

    def on_epoch_end(self, trainer, epoch, metrics) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar, self.epoch = None, None


def _shows_progress(trainer) -> bool:
    return trainer.context.is_main and sys.stderr.isatty() and log.isEnabledFor(logging.INFO)


class EpochLog(Observer):
    """`epoch 2/5 | train/loss 0.41 | val/loss 0.39 | ... | 3.2s` from the main rank."""

    def on_epoch_end(self, trainer, epoch, metrics) -> None:
        if not trainer.context.is_main:
            return
        parts = [f"{k} {v:.4g}" for k, v in metrics.items() if k not in _NOT_LOGGED and isinstance(v, float) and not math.isnan(v)]
        log.info("epoch %d/%d | %s | %.1fs", epoch, trainer.training_config.epochs, " | ".join(parts), metrics["epoch_time"])


class WandbLogger(Observer):
    """Weights & Biases: every optimizer step's loss, gradient norm and learning rate, and
    every epoch row. If the user already called `wandb.init(...)`, metrics go into that run
    and it is left open; otherwise a run is started in `project` and finished at the end.
    Honours WANDB_MODE (e.g. `offline`) like any W&B program."""

    def __init__(self, project: str):
        self.project = project
        self.run: Any = None
        self.owned = False
        self.step = -1

    def on_train_begin(self, trainer, train_dataset, val_dataset) -> None:
        if not trainer.context.is_main:
            return
        try:
            import wandb
        except ImportError as e:  # pragma: no cover - wandb is a dependency
            raise ImportError("wandb_project is set but wandb is not installed: pip install wandb") from e
        config = {"training": trainer.training_config.to_dict(), "model": model_config_dict(trainer.config)}
        self.step = trainer.state.global_step
        if wandb.run is not None:
            self.run, self.owned = wandb.run, False
            self.run.config.update({"trainyard": config}, allow_val_change=True)
        else:
            self.run, self.owned = wandb.init(project=self.project, config=config), True

    def on_batch_end(self, trainer, batch, outputs) -> None:
        if self.run is None or trainer.state.global_step == self.step:
            return
        self.step = trainer.state.global_step
        self.run.log(dict(trainer.step_metrics), step=self.step)

    def on_epoch_end(self, trainer, epoch, metrics) -> None:
        if self.run is not None:
            self.run.log({**{k: v for k, v in metrics.items() if k != "epoch"}, "epoch": epoch}, step=trainer.state.global_step)

    def close(self) -> None:
        if self.run is not None and self.owned:
            self.run.finish()
        self.run = None
