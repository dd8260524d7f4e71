"""The run context inside a Ray Tune trial: one process, reports go to Tune."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray.tune
import torch
from torch import nn

from trainyard.engine.checkpoint import local_path
from trainyard.engine.context import RunContext


class TuneTrialContext(RunContext):
    def __init__(self):
        gpus = ray.get_gpu_ids() if ray.is_initialized() else []
        self.device = torch.device("cuda" if gpus and torch.cuda.is_available() else "cpu")

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    def report(self, metrics: dict[str, Any], checkpoint: Path | None) -> None:
        plain = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))}
        ray.tune.report(plain, checkpoint=ray.tune.Checkpoint.from_directory(str(checkpoint)) if checkpoint else None)

    def checkpoint_to_resume(self) -> Path | None:
        checkpoint = ray.tune.get_checkpoint()
        return local_path(checkpoint) if checkpoint is not None else None
