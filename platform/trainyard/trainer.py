"""The public `trainyard.Trainer`: the engine loop, in this process or on Ray Train.

    Trainer(model, config, training_config).train(train_data, val_data)              # this process
    Trainer(model_factory, config, training_config, scaling=2).train(train_data)     # 2 Ray Train workers

It is the engine's `TrainingLoop` plus `scaling=` / `run_config=`. Ray is imported only when
`scaling` is set and `train` runs (`trainyard.execution.launch`); in-process training never
loads it.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Mapping

from torch import nn

from trainyard.engine.config import TrainingConfig, as_training_config
from trainyard.engine.hooks import TrainingHooks
from trainyard.engine.loop import TrainingLoop
from trainyard.engine.task import TaskSpec, as_task_spec
from trainyard.execution.ingest import run_inputs
from trainyard.execution.launch import fit
from trainyard.export.run import ExportBundle
from trainyard.models import adapters

__all__ = ["Trainer"]


class Trainer(TrainingLoop):
    """Trains `model` on `train_data`, here or, with `scaling`, in Ray Train workers (DDP).

    `scaling`: None (this process), a number of workers, or a `ray.train.ScalingConfig`.
    `run_config`: a `ray.train.RunConfig` (name, storage_path, failure_config, ...), only
    with `scaling`.
    `peft_config`: adapters to train instead of the whole model (a `peft.LoraConfig` or any
    PEFT config, or a dict: `{"method": "lora", "r": 16, "merge_adapters": False}`); see
    `trainyard.models.adapters`.
    """

    def __init__(self, model: nn.Module | Callable[[], nn.Module], config: Any = None, training_config: TrainingConfig | Mapping[str, Any] | None = None,
                 task_spec: TaskSpec | str | Mapping[str, Any] | None = None, hooks: TrainingHooks | list[TrainingHooks] | None = None,
                 scaling: Any = None, run_config: Any = None, peft_config: Any = None):  # fmt: skip - the engine's arguments, then Ray's and the adapters
        training_config = as_training_config(training_config)
        if peft_config is not None:
            model = _with_adapters(model, peft_config, task_spec)
        # In this process the bundle is made as training ends; on Ray, by the driver (launch.fit).
        observers = [ExportBundle()] if training_config.export_bundle and scaling is None else []
        super().__init__(model, config, training_config, task_spec, hooks, observers=observers)
        if scaling is not None and not (_is_positive_int(scaling) or _is_worker_range(scaling) or hasattr(scaling, "num_workers")):
            raise TypeError(
                f"scaling must be None (this process), a number of workers, a range (min, max) of them (elastic: as many as "
                f"the cluster holds), or a ray.train.ScalingConfig; got {scaling!r}"
            )
        if run_config is not None and scaling is None:
            raise ValueError(
                "run_config configures a Ray Train run: pass scaling=N (or a ray.train.ScalingConfig) with it, "
                "or drop run_config to train in this process"
            )
        self.scaling = scaling
        self.run_config = run_config
        self.merge_adapters = peft_config.get("merge_adapters", True) if isinstance(peft_config, Mapping) else True

    def train(self, train_data: Any, val_data: Any = None, resume_from: str | os.PathLike | None = None) -> dict[str, Any]:
        """Train, and return the results dict (see `TrainingLoop.train`). With
        `scaling`, the same loop runs in Ray Train workers, rank 0's results come back here
        and the trained weights are loaded into `self.model`."""
        if self.scaling is None:  # Ray starts only for data that Ray Data reads
            return super().train(*run_inputs(train_data, val_data, self.config, self.task_spec, on_ray=False), resume_from)
        return fit(self, train_data, val_data, resume_from)


def _with_adapters(model: Any, peft_config: Any, task_spec: Any) -> Any:
    """The model (or a factory of it) with PEFT adapters; a factory stays one, so that Ray's
    workers each build their own."""
    task = as_task_spec(task_spec).name if task_spec is not None else None
    adapters.peft_config(peft_config, task)  # a bad setting is refused here, before any model is built
    if isinstance(model, nn.Module):
        return adapters.with_adapters(model, peft_config, task)
    return functools.partial(adapters.with_adapters_of, model, peft_config, task)


def _is_worker_range(value: Any) -> bool:
    """(min, max) workers, 1 <= min <= max: elastic."""
    return isinstance(value, tuple) and len(value) == 2 and all(_is_positive_int(v) for v in value) and value[0] <= value[1]


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
