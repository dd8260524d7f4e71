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

SECTIONS = ("model", "data", "task", "training", "source")  # source: provenance, informational
_NOT_MODEL_CONFIG = ("name", "factory", "name_or_path", "tokenizer")  # model-section keys that choose, not configure


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
    from trainyard import _yaml
    from trainyard.engine.config import FIELD_NAMES

    config_dir = Path(config_dir)
    if not config_dir.is_dir():
        raise FileNotFoundError(f"config_dir {config_dir} is not a directory")
    options = _as_options(args)
    if options.get("config"):
        chosen = Path(options["config"])
        path = chosen if chosen.is_absolute() or chosen.is_file() else config_dir / chosen
        spec = load_spec(path)
    else:
        spec = {}
        if (config_dir / "experiment.yaml").is_file():
            spec = load_spec(config_dir / "experiment.yaml")
        for section in ("model", "data", "training"):
            file = config_dir / f"{section}.yaml"
            if file.is_file():
                content = _yaml.load(file.read_text()) or {}
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
        if isinstance(data.get(key), str) and "://" not in data[key]:
            data[key] = str((config_dir / data[key]).resolve())  # an absolute path stays as it is
    validate(spec)
    return spec


def validate(spec: Mapping[str, Any]) -> None:
    """Check an experiment spec without building it: training fields, model, task."""
    from trainyard.engine.task import TaskSpec

    TrainingConfig.from_dict(spec.get("training") or {})
    if spec.get("task"):
        TaskSpec(name=spec["task"])
    model = spec.get("model") or {}
    if not isinstance(model, Mapping):
        raise ValueError(f"the model section must be a mapping, got {model!r}")
    if "name_or_path" not in model and "factory" not in model:
        _model_builder(dict(model))  # raises for an unknown built-in name


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
    train_data, val_data = build_data(dict(spec.get("data") or {}), base_dir)
    builder, model_config, _tokenizer = model_recipe(spec)
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


def model_recipe(spec: Mapping[str, Any]) -> tuple[Callable[[Any], Any], dict[str, Any], Any]:
    """(builder: model config -> model, the model config, the tokenizer) of a spec.

    The model section picks the model: `name` (built-in), `factory: "module:function"`, or
    `name_or_path` (a local Hugging Face directory, its own tokenizer). Built-in models
    get a character tokenizer: `tokenizer: bytes` (the default; every UTF-8 byte),
    `tokenizer: addition` (the default for the addition data) or `tokenizer: {alphabet: "..."}`;
    its vocabulary size and pad id enter the model config unless the section sets them.
    """
    section = dict(spec.get("model") or {})
    data = dict(spec.get("data") or {})
    if "name_or_path" in section:
        from trainyard.models import hf

        tokenizer = hf.load_tokenizer(section["name_or_path"])
        config = {"pad_token_id": tokenizer.pad_token_id, **_model_settings(section)}
        return hf.model_builder(section["name_or_path"], spec.get("task")), config, tokenizer
    tokenizer = _tokenizer(section.get("tokenizer"), data)
    derived = {
        **_model_defaults(section),  # every key is there, so sweeps can search model.<any field>
        "vocab_size": tokenizer.vocab_size,
        "pad_token_id": tokenizer.pad_token_id,
        **_data_model_config(data),
    }
    settings = _model_settings(section)
    if "tokenizer" in section and settings.get("vocab_size", tokenizer.vocab_size) < tokenizer.vocab_size:
        raise ValueError(
            f"model vocab_size={settings['vocab_size']} is smaller than the tokenizer's {tokenizer.vocab_size} ids: "
            "drop vocab_size from the model section (it is taken from the tokenizer) or raise it"
        )
    return _model_builder(section), {**derived, **settings}, tokenizer


def _model_defaults(section: Mapping[str, Any]) -> dict[str, Any]:
    import dataclasses

    from trainyard.models import CONFIGS

    config = CONFIGS.get(section.get("name", "gpt")) if "factory" not in section else None
    return dataclasses.asdict(config()) if config is not None else {}


def _model_settings(section: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in section.items() if k not in _NOT_MODEL_CONFIG}


def _tokenizer(choice: Any, data: Mapping[str, Any]):
    from trainyard.data.tokenizer import CharTokenizer

    if choice is None:
        choice = "addition" if data.get("name") == "addition" else "bytes"
    if choice == "bytes":
        return CharTokenizer.bytes()
    if choice == "addition":
        from trainyard.data.addition import TOKENIZER

        return TOKENIZER
    if isinstance(choice, Mapping) and isinstance(choice.get("alphabet"), str) and choice["alphabet"]:
        return CharTokenizer(choice["alphabet"])
    raise ValueError(f"model tokenizer={choice!r}: use bytes, addition or {{alphabet: 'characters'}}")


def _data_model_config(data: Mapping[str, Any]) -> dict[str, Any]:
    """Model config entries a built-in dataset needs (its sequence length)."""
    if data.get("name") == "addition":
        from trainyard.data.addition import model_config

        return model_config(data.get("digits", 3))
    return {}


def build_data(section: dict[str, Any], base_dir: Path) -> tuple[Any, Any]:
    if "name" in section:
        from trainyard.data import load_builtin

        return load_builtin(section.pop("name"), **section)
    if "train" in section:
        train = str((base_dir / section["train"]).resolve())
        val = str((base_dir / section["val"]).resolve()) if section.get("val") else None
        return train, val
    raise ValueError("the data section needs either name: <built-in dataset> or train: <path to Parquet>")


def _model_builder(section: dict[str, Any]) -> Callable[[Any], Any]:
    if "factory" in section:
        module_name, _, attr = str(section["factory"]).partition(":")
        return getattr(importlib.import_module(module_name), attr)
    from trainyard.models import MODELS, build_model

    name = section.get("name", "gpt")
    if name not in MODELS:
        raise ValueError(
            f"unknown model {name!r}: built-in models are {sorted(MODELS)}; give factory: 'module:function', "
            "or name_or_path: <a local Hugging Face model directory>"
        )
    return functools.partial(build_model, name)
