"""Weights & Biases logging, only when `TrainingConfig.wandb_project` is set.

If the user already called `wandb.init(...)`, metrics go into that run and it is left open;
otherwise a run is started in `wandb_project` and finished when training ends. Honours
WANDB_MODE (e.g. `offline`) like any W&B program.
"""

from __future__ import annotations

from typing import Any


class WandbRun:
    def __init__(self, project: str, config: dict[str, Any]):
        try:
            import wandb
        except ImportError as e:  # pragma: no cover - wandb is a dependency
            raise ImportError("wandb_project is set but wandb is not installed: pip install wandb") from e
        self._wandb = wandb
        if wandb.run is not None:
            self.run, self.owned = wandb.run, False
            self.run.config.update({"trainyard": config}, allow_val_change=True)
        else:
            self.run, self.owned = wandb.init(project=project, config=config), True

    def log(self, metrics: dict[str, Any], step: int, epoch: int | None = None) -> None:
        data = dict(metrics)
        if epoch is not None:
            data["epoch"] = epoch
        self.run.log(data, step=step)

    def finish(self) -> None:
        if self.owned:
            self.run.finish()
