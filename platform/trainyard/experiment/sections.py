"""What a model section and a data section of an experiment may hold, and which model a
model section names: checked once, when the spec is parsed (`parse_spec`)."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import inspect
from typing import Any, Callable, Mapping

from trainyard.data import DATASETS
from trainyard.models import CONFIGS, MODELS, build_model

NOT_MODEL_CONFIG = ("name", "factory", "name_or_path", "tokenizer", "revision", "dtype")  # model-section keys that choose, not configure


def check_model_section(model: Mapping[str, Any]) -> None:
    """A built-in model's name and keys, or a factory that imports (a factory's keys and a
    Hugging Face model's are their own)."""
    if model.get("name") == "hf" and "name_or_path" not in model:
        raise ValueError("model.name=hf needs name_or_path: a Hugging Face Hub id (e.g. gpt2, org/name) or a local model directory")
    if "name_or_path" in model:
        if model.get("name", "hf") != "hf":
            raise ValueError(f"model.name={model['name']!r} with name_or_path: a Hugging Face model is name: hf (or no name); drop one")
        return
    for key in ("revision", "dtype"):
        if key in model:
            raise ValueError(f"model.{key} is for a Hugging Face model (name: hf, name_or_path: ...); a built-in model has no {key}")
    model_builder(dict(model))  # raises for an unknown built-in name, or a factory that cannot be found
    if "factory" not in model:
        _check_keys("model", model, _model_fields(model))


def check_data_section(data: Mapping[str, Any]) -> None:
    """A built-in dataset's name and parameters, or the file settings."""
    if "name" in data:
        if data["name"] not in DATASETS:
            close = difflib.get_close_matches(str(data["name"]), list(DATASETS), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(f"data.name {data['name']!r} is not a built-in dataset: {hint}the built-ins are {sorted(DATASETS)}; "
                             "or give train: <path> for your own files")
    _check_keys("data", data, _data_fields(data))


def _model_fields(section: Mapping[str, Any]) -> list[str]:
    """The keys a built-in model's section may hold: its config's fields, and the choosers."""
    config = CONFIGS.get(section.get("name", "gpt"))
    fields = [f.name for f in dataclasses.fields(config)] if config is not None else []
    return [*fields, *NOT_MODEL_CONFIG, "preset"]


def _data_fields(section: Mapping[str, Any]) -> list[str]:
    """The keys a data section may hold: the built-in dataset's parameters, or the paths."""
    if "name" in section:
        loader = DATASETS.get(section["name"])
        return ["name", *inspect.signature(loader).parameters] if loader is not None else ["name"]
    return ["train", "val", *FILE_OPTIONS]


FILE_OPTIONS = ("format", "text_column", "seq_len", "pack")  # how Ray Data reads the files (DataFiles)


def _check_keys(section: str, given: Mapping[str, Any], allowed: list[str]) -> None:
    """Refuse a key nobody reads (a typo would otherwise be ignored), naming the closest."""
    for key in given:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"did you mean {section}.{close[0]}?" if close else f"the keys are {', '.join(allowed)}"
            raise ValueError(f"{section}.{key} is not a {section} setting here: {hint}")


def model_builder(section: dict[str, Any]) -> Callable[[Any], Any]:
    """The function that builds the section's model from a model config."""
    if "factory" in section:
        return _factory(section["factory"])

    name = section.get("name", "gpt")
    if name not in MODELS:
        raise ValueError(
            f"unknown model {name!r}: built-in models are {sorted(MODELS)}; give factory: 'module:function', "
            "or name: hf with name_or_path: <a Hugging Face Hub id or model directory>"
        )
    return functools.partial(build_model, name)


def _factory(text: Any) -> Callable[[Any], Any]:
    """`package.module:function`, imported; each way it can be wrong says what to write."""
    module_name, sep, attr = str(text).partition(":")
    if not (sep and module_name and attr):
        raise ValueError(f"model.factory={text!r} must be 'package.module:function' (a function of the model config returning a torch.nn.Module)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(
            f"model.factory={text!r}: the module {module_name!r} cannot be imported ({type(e).__name__}: {e}); it must be importable "
            "where trainyard runs (installed, or its folder on PYTHONPATH)"
        ) from None
    function = getattr(module, attr, None)
    if not callable(function):
        names = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n, None))]
        close = difflib.get_close_matches(attr, names, n=1)
        hint = f"did you mean {module_name}:{close[0]}?" if close else "name a function defined there"
        raise ValueError(f"model.factory={text!r}: {module_name} has no function {attr!r}; {hint}")
    return function
