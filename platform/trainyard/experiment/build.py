"""From a spec to something that trains: the one pipeline every entry point uses.

    exp = build(load_spec("jobs/configs/addition.yaml", ["epochs=3"]))   # or any spec / dataset
    exp.trainer().train(exp.train_data, exp.val_data)                  # in this process
    exp.trainer(scaling=2, run_config=...)                              # on Ray Train

The CLI and `jobs/*.py`, sweeps (`run_sweep`, `run_local_hpo_sweep`), final training and
the seed-004 functions (`train_model`, `build_training_config`) all go through `build`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from trainyard import _yaml
from trainyard.engine.config import FIELD_NAMES, TrainingConfig
from trainyard.engine.hooks import TrainingHooks
from trainyard.engine.task import TaskSpec
from trainyard.experiment.recipe import data_recipe, model_recipe, tokenize_text
from trainyard.experiment.spec import ExperimentSpec, apply_overrides, as_spec, load_spec, parse_spec
from trainyard.storage import relative_to
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
        return trainer


def build(config: Any, dataset: Any = None, base_dir: Path | None = None) -> Experiment:
    """Build the model recipe and data of `config` (an ExperimentSpec; a dict of sections, a
    bare model section or a TrainingConfig is checked here first): `dataset` if given (split
    and tokenized as `train_model` describes), else the spec's data section."""
    spec = as_spec(config)
    builder, model_config, tokenizer = model_recipe(spec)
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


def build_training_config(args: Any = None, config_dir: str | Path = ".") -> dict[str, Any]:
    """An experiment spec (sections model, data, task, training) from the YAML files of
    `config_dir`, with the command line's choices applied, validated.

    Files: `args.config` if given (relative to `config_dir`), else `experiment.yaml` and/or
    one file per section (`model.yaml`, `data.yaml`, `training.yaml`) in `config_dir`.
    `args` is an argparse Namespace, a dict or a list of `key=value` strings; from a
    Namespace or dict, `overrides` (a list of `key=value`) and any attribute named like a
    TrainingConfig field (and not None) apply, in that order. Relative data paths are
    resolved against `config_dir`, so the spec works from any directory.
    """
    config_dir = Path(config_dir)
    if not config_dir.is_dir():
        raise FileNotFoundError(f"config_dir {config_dir} is not a directory")
    options = _as_options(args)
    if options.get("config"):
        chosen = Path(options["config"])
        path = chosen if chosen.is_absolute() or chosen.is_file() else config_dir / chosen
        spec = load_spec(path).to_dict()
    else:
        spec = {}
        if (config_dir / "experiment.yaml").is_file():
            spec = load_spec(config_dir / "experiment.yaml").to_dict()
        for section in ("model", "data", "training"):
            file = config_dir / f"{section}.yaml"
            if file.is_file():
                content = _yaml.load_file(file, f"{section} config") or {}
                if not isinstance(content, Mapping):
                    raise ValueError(f"{file}: a section file holds a mapping of {section} settings")
                spec[section] = {**(spec.get(section) or {}), **content}
        if not spec:
            raise FileNotFoundError(
                f"{config_dir} has no experiment.yaml, model.yaml, data.yaml or training.yaml; "
                "pass args with config=<file> or put those files there"
            )
    spec = apply_overrides(spec, list(options.get("overrides") or []))
    flags = {k: v for k, v in options.items() if k in FIELD_NAMES and v is not None}
    if flags:
        spec["training"] = {**(spec.get("training") or {}), **flags}
    data = spec.get("data") or {}
    for key in ("train", "val"):
        if isinstance(data.get(key), str):
            data[key] = relative_to(config_dir, data[key])
    parse_spec(spec)
    return spec


def _as_options(args: Any) -> dict[str, Any]:
    if args is None:
        return {}
    if isinstance(args, Mapping):
        return dict(args)
    if isinstance(args, (list, tuple)):
        if not all(isinstance(a, str) for a in args):
            raise TypeError("args as a list must hold key=value strings")
        return {"overrides": list(args)}
    if hasattr(args, "__dict__"):
        return dict(vars(args))
    raise TypeError(f"args must be an argparse Namespace, a dict or a list of key=value strings, got {type(args).__name__}")
