"""The engine: the training loop in plain PyTorch. It imports nothing of trainyard but its
private helpers (`_logging`, `_yaml`), and never Ray or Optuna (tests/test_layering.py).

`TrainingLoop` runs in the run context it is handed (`TrainingLoop.run(ctx, ...)`;
`train(...)` is this process). The public `trainyard.Trainer` extends it with `scaling=`
(Ray Train).
"""

from trainyard.engine.checkpoint import CheckpointError
from trainyard.engine.config import TrainingConfig
from trainyard.engine.hooks import Event, TrainingHooks
from trainyard.engine.loop import TrainingLoop
from trainyard.engine.state import TrainState
from trainyard.engine.task import TaskSpec

__all__ = ["CheckpointError", "Event", "TaskSpec", "TrainingConfig", "TrainingHooks", "TrainState", "TrainingLoop"]
