"""Experiment configs: one YAML file naming the model, the data and the TrainingConfig.

    model:    {name: gpt, d_model: 128, n_layers: 2}     # built-in, or factory: "pkg.mod:fn"
    data:     {name: addition, train_size: 20000}        # built-in, or train: x.parquet, val: y.parquet
    task:     language_modeling                          # optional; auto-detected if absent
    training: {learning_rate: 3.0e-3, epochs: 5}         # any TrainingConfig field

`key=value` overrides address a section with a dot (`model.d_model=64`); a bare key is a
training field (`epochs=3`). Values are parsed as YAML (`1e-3`, `true`, `[onnx]`).
"""

from __future__ import annotations

import copy
import functools
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from trainyard.engine.config import TrainingConfig

SECTIONS = ("model", "data", "task", "training")


@dataclass
class Experiment:
    spec: dict[str, Any]  # the merged YAML
    model_config: dict[str, Any]
    model_factory: Callable[[], Any]
    model_builder: Callable[[Any], Any]  # model config -> model (sweeps override the config)
    train_data: Any
    val_data: Any
    training_config: TrainingConfig
    task_spec: Any


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    from trainyard import _yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"experiment config {path} not found")
    spec = _yaml.load(path.read_text()) or {}
    if not isinstance(spec, Mapping):
        raise ValueError(f"{path}: an experiment config is a mapping with sections {list(SECTIONS)}")
    unknown = set(spec) - set(SECTIONS)
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {sorted(unknown)}; sections are {list(SECTIONS)}")
    return apply_overrides(dict(spec), overrides)


def apply_overrides(spec: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    from trainyard import _yaml

    spec = copy.deepcopy(spec)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} must look like key=value (e.g. epochs=3 or model.d_model=64)")
        section, dot, field = key.partition(".")
        if not dot:
            section, field = "training", key
        if section not in SECTIONS or section == "task":
            raise ValueError(f"override {item!r}: section {section!r} is not one of model, data, training")
        spec.setdefault(section, {})
        spec[section][field] = _yaml.load(raw)
    return spec


def build(spec: Mapping[str, Any], base_dir: Path | None = None) -> Experiment:
    from trainyard.engine.task import TaskSpec

    base_dir = base_dir or Path.cwd()
    model_section = dict(spec.get("model") or {})
    data_section = dict(spec.get("data") or {})
    train_data, val_data, data_model_config = _build_data(data_section, base_dir)
    model_config = {**data_model_config, **{k: v for k, v in model_section.items() if k not in ("name", "factory")}}
    builder = _model_builder(model_section)
    task = spec.get("task")
    return Experiment(
        spec=dict(spec),
        model_config=model_config,
        model_factory=functools.partial(builder, model_config),
        model_builder=builder,
        train_data=train_data,
        val_data=val_data,
        training_config=TrainingConfig.from_dict(spec.get("training") or {}),
        task_spec=TaskSpec(name=task) if task else None,
    )


def _build_data(section: dict[str, Any], base_dir: Path) -> tuple[Any, Any, dict[str, Any]]:
    if "name" in section:
        from trainyard.data import load_builtin

        name = section.pop("name")
        train, val = load_builtin(name, **section)
        if name == "addition":
            from trainyard.data.addition import model_config

            return train, val, model_config(section.get("digits", 3))
        return train, val, {}
    if "train" in section:
        train = str((base_dir / section["train"]).resolve())
        val = str((base_dir / section["val"]).resolve()) if section.get("val") else None
        return train, val, {}
    raise ValueError("the data section needs either name: <built-in dataset> or train: <path to Parquet>")


def _model_builder(section: dict[str, Any]) -> Callable[[Any], Any]:
    if "factory" in section:
        module_name, _, attr = str(section["factory"]).partition(":")
        return getattr(importlib.import_module(module_name), attr)
    from trainyard.models import MODELS, build_model

    name = section.get("name", "gpt")
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: built-in models are {sorted(MODELS)}, or give factory: 'module:function'")
    return functools.partial(build_model, name)
