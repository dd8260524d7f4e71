"""From a spec to something that trains: the one pipeline every entry point uses.

    exp = build(load_spec("jobs/configs/addition.yaml", ["epochs=3"]))   # or any spec / dataset
    exp.trainer().train(exp.train_data, exp.val_data)                  # in this process
    exp.trainer(scaling=2, run_config=...)                              # on Ray Train

The CLI and `jobs/*.py`, sweeps, the final training and the seed-004 functions of
`trainyard.compat` all go through `build`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from trainyard.engine.config import TrainingConfig
from trainyard.engine.hooks import TrainingHooks
from trainyard.engine.task import TaskSpec
from trainyard.experiment.recipe import data_recipe, model_recipe, tokenize_text
from trainyard.experiment.spec import ExperimentSpec, as_spec
from trainyard.models.adapters import adapter_builder
from trainyard.trainer import Trainer


@dataclass
class Experiment:
    spec: ExperimentSpec
    model_config: dict[str, Any]
    model_builder: Callable[[Any], Any]  # model config -> model (sweeps override the config)
    tokenizer: Any
    train_data: Any
    val_data: Any
    training_config: TrainingConfig
    task_spec: TaskSpec | None

    @property
    def model_factory(self) -> Callable[[], Any]:
        """A zero-argument factory: what the Trainer seeds before calling, and Ray ships."""
        return functools.partial(self.model_builder, self.model_config)

    def trainer(
        self, training_config: TrainingConfig | None = None, *, hooks: list[TrainingHooks] | None = None, scaling: Any = None, run_config: Any = None
    ) -> Trainer:
        """The Trainer of this experiment (`training_config` replaces the spec's)."""
        trainer = Trainer(self.model_factory, self.model_config, training_config or self.training_config, self.task_spec, hooks=hooks, scaling=scaling, run_config=run_config)
        trainer.tokenizer = self.tokenizer  # into the export bundle, so that it takes text
        trainer.merge_adapters = (self.spec.peft or {}).get("merge_adapters", True)
        return trainer


def build(config: Any, dataset: Any = None, base_dir: Path | None = None) -> Experiment:
    """Build the model recipe and data of `config` (an ExperimentSpec; a dict of sections, a
    bare model section or a TrainingConfig is checked here first): `dataset` if given (split
    and tokenized as `train_model` describes), else the spec's data section."""
    spec = as_spec(config)
    builder, model_config, tokenizer = model_recipe(spec)
    if spec.peft is not None:
        builder = adapter_builder(builder, spec.peft, spec.task)
    train, val = data_recipe(spec, dataset, base_dir)
    max_len = model_config.get("max_seq_len")
    return Experiment(
        spec=spec,
        model_config=model_config,
        model_builder=builder,
        tokenizer=tokenizer,
        train_data=tokenize_text(train, tokenizer, max_len),
        val_data=tokenize_text(val, tokenizer, max_len),
        training_config=spec.training,
        task_spec=TaskSpec(name=spec.task) if spec.task else None,
    )
