"""The engine: the training loop in plain PyTorch. It imports nothing of trainyard but its
private helpers (`_logging`, `_yaml`), and never Ray or Optuna (tests/test_layering.py).

`trainyard.engine.Trainer` runs in the run context it is handed (`Trainer.run(ctx, ...)`;
`train(...)` is this process). The public `trainyard.Trainer` adds `scaling=` (Ray Train)
on top of it.
"""

from trainyard.engine.checkpoint import CheckpointError
from trainyard.engine.config import TrainingConfig
from trainyard.engine.hooks import Event, TrainingHooks
from trainyard.engine.state import TrainState
from trainyard.engine.task import TaskSpec
from trainyard.engine.trainer import Trainer

__all__ = ["CheckpointError", "Event", "TaskSpec", "Trainer", "TrainingConfig", "TrainingHooks", "TrainState"]
