"""trainyard: one PyTorch training loop for your process, Ray Train workers and Ray Tune trials.

    from trainyard import Trainer, TrainingConfig, TaskSpec, TrainingHooks

Names are loaded on first use, so `import trainyard` is fast and pulls in neither torch,
Ray nor Optuna.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_PUBLIC = {
    "Trainer": "trainyard.trainer",
    "TrainingConfig": "trainyard.engine.config",
    "TaskSpec": "trainyard.engine.task",
    "TrainingHooks": "trainyard.engine.hooks",
    "CheckpointError": "trainyard.engine.checkpoint",
}

__all__ = list(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'trainyard' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover
    from trainyard.engine.checkpoint import CheckpointError
    from trainyard.engine.config import TrainingConfig
    from trainyard.engine.hooks import TrainingHooks
    from trainyard.engine.task import TaskSpec
    from trainyard.trainer import Trainer
