"""The platform's own observers: hooks on the same dispatcher as the user's.

    ProgressBar   a tqdm bar per epoch, on a terminal only, main rank
    EpochLog      one line per epoch, main rank
    WandbLogger   W&B, when `TrainingConfig.wandb_project` is set (main rank)
    MLflowLogger  MLflow, when `mlflow_experiment` is set (MLFLOW_TRACKING_URI picks the server)
    TensorBoardLogger  TensorBoard event files, when `tensorboard_dir` is set

(The export bundle's observer is trainyard.export's: the public Trainer adds it.)

A new tracker is one small subclass of `_StepAndEpochLogger` (open, write, finish: it gets
every optimizer step from `on_step_end` and every epoch row) and one line in
`builtin_observers`; the loop does not change. Observers read only what every hook may read (`trainer.state`,
`trainer.step_metrics`, `trainer.context`, ...), and only on the main rank do they print
or log anything.
"""

from __future__ import annotations

import importlib
import logging
import math
import sys
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from trainyard._logging import get_logger
from trainyard.engine.config import TrainingConfig
from trainyard.engine.hooks import Observer
from trainyard.engine.model_config import model_config_dict
from trainyard.engine.telemetry import TELEMETRY_KEYS

log = get_logger("trainyard.engine")

# Columns of an epoch row that the log line leaves out (they are in metrics_summary).
_NOT_LOGGED = ("epoch", "epoch_time", "train/perplexity", "val/perplexity", "train/grad_norm", *TELEMETRY_KEYS)


def builtin_observers(cfg: TrainingConfig) -> list[Observer]:
    """The observers a run with `cfg` gets, in firing order."""
    observers: list[Observer] = [ProgressBar(), EpochLog()]
    if cfg.wandb_project:
        observers.append(WandbLogger(cfg.wandb_project))
    if cfg.mlflow_experiment:
        observers.append(MLflowLogger(cfg.mlflow_experiment))
    if cfg.tensorboard_dir:
        observers.append(TensorBoardLogger(cfg.tensorboard_dir))
    return observers


class ProgressBar(Observer):
    """tqdm over the epoch's micro-batches, when stderr is a terminal and INFO is shown."""

    def __init__(self):
        self.bar: Any = None
        self.epoch: int | None = None

    def on_batch_begin(self, trainer, batch) -> None:
        state = trainer.state
        if self.epoch == state.epoch or not _shows_progress(trainer):
            return

        self.close()
        self.epoch = state.epoch
        self.bar = tqdm(
            total=trainer.batches_per_epoch, initial=state.batch_in_epoch, desc=f"epoch {state.epoch}/{trainer.training_config.epochs}",
            leave=False, dynamic_ncols=True,
        )

    def on_step_end(self, trainer, step, metrics) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{metrics['train/step_loss']:.4f}", refresh=False)

    def on_batch_end(self, trainer, batch, outputs) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def on_epoch_end(self, trainer, epoch, metrics) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar, self.epoch = None, None


def _shows_progress(trainer) -> bool:
    return trainer.context.is_main and sys.stderr.isatty() and log.isEnabledFor(logging.INFO)


class EpochLog(Observer):
    """`epoch 2/5 | train/loss 0.41 | val/loss 0.39 | ... | 12.3k tok/s | mfu 41.2% | 3.2s`
    from the main rank (telemetry in short; all of it is in metrics_summary)."""

    def on_epoch_end(self, trainer, epoch, metrics) -> None:
        if not trainer.context.is_main:
            return
        parts = [f"{k} {v:.4g}" for k, v in metrics.items() if k not in _NOT_LOGGED and isinstance(v, float) and not math.isnan(v)]
        parts.append(f"{_short(metrics['throughput/tokens_per_s'])} tok/s")
        if "mfu" in metrics:
            parts.append(f"mfu {100 * metrics['mfu']:.1f}%")
        if metrics["time/data_wait_frac"] >= 0.05:  # worth a look: the device waits for data
            parts.append(f"data wait {100 * metrics['time/data_wait_frac']:.0f}%")
        log.info("epoch %d/%d | %s | %.1fs", epoch, trainer.training_config.epochs, " | ".join(parts), metrics["epoch_time"])

    def on_validation_end(self, trainer, epoch, metrics) -> None:
        if trainer.context.is_main and _inside_epoch(trainer):  # an epoch's end says it in the epoch line
            parts = [f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, float) and not math.isnan(v)]
            log.info("step %d (epoch %d/%d) | %s", trainer.state.global_step, epoch, trainer.training_config.epochs, " | ".join(parts))


def _inside_epoch(trainer) -> bool:
    return trainer.state.batch_in_epoch < trainer.batches_per_epoch


def _short(value: float) -> str:
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.3g}{unit}"
    return f"{value:.3g}"


class _StepAndEpochLogger(Observer):
    """A tracker that records every optimizer step's metrics and every epoch row from the
    main rank: subclasses open a run, write scalars and close it."""

    def __init__(self):
        self.active = False

    def on_train_begin(self, trainer, train_dataset, val_dataset) -> None:
        if trainer.context.is_main:
            self.open(trainer, {"training": trainer.training_config.to_dict(), "model": model_config_dict(trainer.config)})
            self.active = True

    def on_step_end(self, trainer, step, metrics) -> None:
        if self.active:
            self.write(metrics, step)

    def on_validation_end(self, trainer, epoch, metrics) -> None:
        if self.active and _inside_epoch(trainer):  # an evaluation every N steps; an epoch's is in its row
            self.write(dict(metrics), trainer.state.global_step)

    def on_epoch_end(self, trainer, epoch, metrics) -> None:
        if self.active:
            numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "epoch"}
            self.write_epoch(numbers, epoch, trainer.state.global_step)

    def close(self) -> None:
        if self.active:
            self.active = False
            self.finish()

    def open(self, trainer, config: dict[str, Any]) -> None: ...

    def write(self, metrics: dict[str, float], step: int) -> None: ...

    def write_epoch(self, metrics: dict[str, float], epoch: int, step: int) -> None:
        self.write(metrics, step)

    def finish(self) -> None: ...


class WandbLogger(_StepAndEpochLogger):
    """Weights & Biases: every optimizer step's loss, gradient norm and learning rate, and
    every epoch row (with its `epoch`). If the user already called `wandb.init(...)`,
    metrics go into that run and it is left open; otherwise a run is started in `project`
    and finished at the end. Honours WANDB_MODE (e.g. `offline`) like any W&B program."""

    def __init__(self, project: str):
        super().__init__()
        self.project = project
        self.run: Any = None
        self.owned = False

    def open(self, trainer, config: dict[str, Any]) -> None:
        wandb = _require("wandb", "wandb_project", "wandb")
        if wandb.run is not None:
            self.run, self.owned = wandb.run, False
            self.run.config.update({"trainyard": config}, allow_val_change=True)
        else:
            self.run, self.owned = wandb.init(project=self.project, name=trainer.run_name, config=config), True

    def write(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(dict(metrics), step=step)

    def write_epoch(self, metrics: dict[str, float], epoch: int, step: int) -> None:
        self.run.log({**metrics, "epoch": epoch}, step=step)

    def finish(self) -> None:
        if self.owned:
            self.run.finish()
        self.run = None


class MLflowLogger(_StepAndEpochLogger):
    """MLflow: the configs as parameters, metrics per step and per epoch. Uses the active
    MLflow run if there is one (and leaves it open), else starts one in `experiment`. The
    tracking URI is MLflow's own choice: MLFLOW_TRACKING_URI, else ./mlflow.db. Each run
    of the loop (each sweep trial too) is its own MLflow run."""

    def __init__(self, experiment: str):
        super().__init__()
        self.experiment = experiment
        self.owned = False

    def open(self, trainer, config: dict[str, Any]) -> None:
        mlflow = _require("mlflow", "mlflow_experiment", "mlflow-skinny")

        if not log.isEnabledFor(logging.DEBUG):
            logging.getLogger("mlflow").setLevel(logging.WARNING)  # its store set-up logs at INFO
        self.mlflow = mlflow
        self.owned = mlflow.active_run() is None
        if self.owned:
            mlflow.set_experiment(self.experiment)
            mlflow.start_run(run_name=trainer.run_name)
        mlflow.log_params({k: str(v) for k, v in _flatten(config).items()})

    def write(self, metrics: dict[str, float], step: int) -> None:
        finite = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(v)}
        self.mlflow.log_metrics(finite, step=step)

    def finish(self) -> None:
        if self.owned:
            self.mlflow.end_run()


class TensorBoardLogger(_StepAndEpochLogger):
    """TensorBoard: scalars per step and per epoch under `<tensorboard_dir>/<run name>/`, the
    configs as text. `tensorboard --logdir <tensorboard_dir>` shows every run side by side."""

    def __init__(self, directory: str):
        super().__init__()
        self.directory = directory
        self.writer: Any = None

    def open(self, trainer, config: dict[str, Any]) -> None:
        _require("tensorboard", "tensorboard_dir", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(self.directory) / trainer.run_name))  # a resumed run writes on in it
        for section, values in config.items():
            self.writer.add_text(f"config/{section}", "\n".join(f"{k}: {v}" for k, v in (values or {}).items()), 0)

    def write(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            if value is not None:
                self.writer.add_scalar(key, value, step)

    def finish(self) -> None:
        self.writer.close()


def _require(module: str, field: str, package: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"TrainingConfig.{field} is set but {module} is not installed: pip install 'trainyard[tracking]' "
            f"(or pip install {package}), or set {field}=None"
        ) from e


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out
