"""The engine: plain PyTorch, no Ray, no Optuna (a test keeps it that way)."""

from trainyard.engine.checkpoint import CheckpointError
from trainyard.engine.config import TrainingConfig
from trainyard.engine.hooks import Event, TrainingHooks
from trainyard.engine.task import TaskSpec
from trainyard.engine.trainer import Trainer, TrainState

__all__ = ["CheckpointError", "Event", "TaskSpec", "Trainer", "TrainingConfig", "TrainingHooks", "TrainState"]
