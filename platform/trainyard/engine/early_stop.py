"""Early stopping: the run ends when a metric has not improved for `patience` evaluations.

    watch = EarlyStopping.from_config(cfg, saved)   # saved: a checkpoint's state, or None
    reason = watch.update(metrics, epoch, step)      # after each evaluation: a reason to stop, or None
    watch.to_dict()                                  # what a checkpoint keeps (plain values)

The count of evaluations since the best and the best value itself are part of the run's
state, saved in every checkpoint, so a resumed run stops exactly where the uninterrupted one
would have. `train/*` metrics are measured at epoch ends; `val/*` at every evaluation (each
epoch's end, and every `eval_every_n_steps`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from trainyard.engine.config import TrainingConfig
from trainyard.engine.fields import METRIC_NAMES


@dataclass
class EarlyStopping:
    metric: str
    patience: int
    mode: str  # "min" or "max"
    min_delta: float
    best: float | None = None
    best_epoch: int = 0
    best_step: int = 0
    evaluations_since_best: int = 0

    @classmethod
    def from_config(cls, cfg: TrainingConfig, saved: Mapping[str, Any] | None = None) -> "EarlyStopping | None":
        """The watch `cfg` asks for (None when it asks for none), continuing `saved` when that
        watched the same metric the same way (the patience may have changed: it applies)."""
        if cfg.early_stopping_metric is None:
            return None
        mode = cfg.early_stopping_mode or ("max" if cfg.early_stopping_metric.endswith(("accuracy", "exact_match")) else "min")
        watch = cls(cfg.early_stopping_metric, cfg.early_stopping_patience, mode, cfg.early_stopping_min_delta)
        if saved and saved.get("metric") == watch.metric and saved.get("mode") == watch.mode:
            watch.best, watch.best_epoch, watch.best_step = saved["best"], saved["best_epoch"], saved["best_step"]
            watch.evaluations_since_best = saved["evaluations_since_best"]
        return watch

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def update(self, metrics: Mapping[str, Any], epoch: int, step: int) -> str | None:
        """Take one evaluation's metrics (those without the watched one are not its
        evaluations); returns why the run stops, or None."""
        if self.metric not in metrics:
            return None
        value = float(metrics[self.metric])
        if self.improves(value):
            self.best, self.best_epoch, self.best_step, self.evaluations_since_best = value, epoch, step, 0
            return None
        self.evaluations_since_best += 1
        return self.reason()

    def improves(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        return value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta

    def reason(self) -> str | None:
        """Why the run stops now (the patience is spent), or None."""
        if self.evaluations_since_best < self.patience:
            return None
        by = f" by more than {self.min_delta:g}" if self.min_delta else ""
        best = f"{self.best:.4g} at epoch {self.best_epoch}, step {self.best_step}" if self.best is not None else "never a number"
        return (
            f"early stopping: {self.metric} has not {'fallen' if self.mode == 'min' else 'risen'}{by} for "
            f"{self.evaluations_since_best} evaluation(s) (early_stopping_patience={self.patience}); best {best}"
        )


def check_measurable(cfg: TrainingConfig, has_validation: bool) -> None:
    """Refuse, before training, settings that need validation data the run does not have."""
    if has_validation:
        return
    if cfg.early_stopping_metric is not None and cfg.early_stopping_metric.startswith("val/"):
        raise ValueError(
            f"early_stopping_metric={cfg.early_stopping_metric!r} needs validation data, and this run has none: "
            f"pass val_data (val: in a config file), or watch 'train/{cfg.early_stopping_metric[4:]}'"
        )
    if cfg.eval_every_n_steps is not None:
        raise ValueError(
            f"eval_every_n_steps={cfg.eval_every_n_steps} needs validation data, and this run has none: "
            "pass val_data (val: in a config file), or set eval_every_n_steps=None"
        )


def check_metric_measured(cfg: TrainingConfig, metrics: Mapping[str, Any]) -> None:
    """Where `metrics` measure the watched split (train/ or val/), the watched metric must
    be one this run's task measures (no accuracy for regression, no exact match but for
    language modelling on answers)."""
    split = cfg.early_stopping_metric.split("/")[0]
    if not any(k.startswith(split + "/") for k in metrics):
        return  # an evaluation of the other split (the validation data's every N steps)
    measured = [f"{split}/{m}" for m in METRIC_NAMES if f"{split}/{m}" in metrics]
    if cfg.early_stopping_metric not in metrics:
        raise ValueError(
            f"early_stopping_metric={cfg.early_stopping_metric!r} is not measured for this run's task; "
            f"it measures {measured}: watch one of those"
        )
