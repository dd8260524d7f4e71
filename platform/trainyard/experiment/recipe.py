"""The model and data recipes of a spec: which model, its config and tokenizer; which data.

    builder, model_config, tokenizer = model_recipe(spec)    # builder(model_config) -> nn.Module
    train, val = data_recipe(spec, dataset=None)             # the spec's data, or `dataset` split
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping

from trainyard.data import load_builtin
from trainyard.data.addition import model_config
from trainyard.data.addition import tokenizer as addition_tokenizer
from trainyard.data.files import DataFiles
from trainyard.data.instructions import is_instruction_data, tokenize_instructions
from trainyard.data.tokenizer import CharTokenizer
from trainyard.experiment.sections import FILE_OPTIONS, NOT_MODEL_CONFIG, model_builder
from trainyard.experiment.spec import ExperimentSpec
from trainyard.models import CONFIGS, hf
from trainyard.storage import relative_to

_VAL_KEYS = ("validation", "val", "test")


# -- the model -----------------------------------------------------------------------------


def model_recipe(spec: ExperimentSpec) -> tuple[Callable[[Any], Any], dict[str, Any], Any]:
    """(builder: model config -> model, the model config, the tokenizer) of a spec.

    The model section picks the model: `name` (built-in), `factory: "module:function"`, or
    `name_or_path` (name: hf: a Hugging Face Hub id or local directory, with its own tokenizer;
    `revision` and `dtype` optional). Built-in models
    get a character tokenizer: `tokenizer: bytes` (the default; every UTF-8 byte),
    `tokenizer: addition` (the default for the addition data) or `tokenizer: {alphabet: "..."}`;
    its vocabulary size and pad id enter the model config unless the section sets them.
    """
    section, data = spec.model, spec.data
    if "name_or_path" in section:
        revision = section.get("revision")
        builder = hf.model_builder(section["name_or_path"], spec.task, revision, section.get("dtype"))  # checks the id first
        tokenizer = hf.load_tokenizer(section["name_or_path"], revision)
        config = {"pad_token_id": tokenizer.pad_token_id, **_model_settings(section)}
        return builder, config, tokenizer
    tokenizer = _tokenizer(section.get("tokenizer"), data)
    defaults = _model_defaults(section)  # every key is there, so sweeps can search model.<any field>
    derived = {**defaults, "vocab_size": tokenizer.vocab_size, "pad_token_id": tokenizer.pad_token_id, **_data_model_config(data)}
    if section.get("preset"):  # a preset's sizes stay, unless the tokenizer or the data need more
        for key in ("vocab_size", "max_seq_len"):
            derived[key] = max(defaults[key], derived[key])
    settings = _model_settings(section)
    if settings.get("vocab_size", tokenizer.vocab_size) < tokenizer.vocab_size:
        raise ValueError(
            f"model vocab_size={settings['vocab_size']} is smaller than the tokenizer's {tokenizer.vocab_size} ids: "
            "drop vocab_size from the model section (it is taken from the tokenizer) or raise it"
        )
    return model_builder(section), {**derived, **settings}, tokenizer


def _model_defaults(section: Mapping[str, Any]) -> dict[str, Any]:
    config = CONFIGS.get(section.get("name", "gpt")) if "factory" not in section else None
    if config is None:
        return {}
    if section.get("preset"):
        if not hasattr(config, "from_preset"):
            raise ValueError(f"model {section.get('name')!r} has no presets: drop preset, or use name: gpt")
        return dataclasses.asdict(config.from_preset(section["preset"]))
    return dataclasses.asdict(config())


def _model_settings(section: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in section.items() if k not in NOT_MODEL_CONFIG}


def _tokenizer(choice: Any, data: Mapping[str, Any]):
    if choice is None:
        choice = "addition" if data.get("name") == "addition" else "bytes"
    if choice == "bytes":
        return CharTokenizer.bytes()
    if choice == "addition":
        return addition_tokenizer(data.get("digits", 3))
    if isinstance(choice, Mapping) and isinstance(choice.get("alphabet"), str) and choice["alphabet"]:
        return CharTokenizer(choice["alphabet"])
    raise ValueError(f"model tokenizer={choice!r}: use bytes, addition or {{alphabet: 'characters'}}")


def _data_model_config(data: Mapping[str, Any]) -> dict[str, Any]:
    """Model config entries a built-in dataset needs (its sequence length)."""
    if data.get("name") == "addition":
        return model_config(data.get("digits", 3))
    return {}


# -- the data ------------------------------------------------------------------------------


def data_recipe(spec: ExperimentSpec, dataset: Any = None, base_dir: Path | None = None) -> tuple[Any, Any]:
    """(train, val): `dataset` split as `train_model` describes, else the spec's data section
    (a built-in dataset, or data files: a config file's own are absolute already, see
    load_spec; any other relative path is taken from `base_dir`, default the working dir)."""
    if dataset is not None:
        return split_dataset(dataset)
    section = spec.data
    if "name" in section:
        return load_builtin(section.pop("name"), **section)
    if "train" in section:
        base_dir = base_dir or Path.cwd()
        train, val = (relative_to(base_dir, section[k]) if section.get(k) else None for k in ("train", "val"))
        if not any(k in section for k in FILE_OPTIONS):
            return train, val

        options = {k: section[k] for k in FILE_OPTIONS if k in section}
        return DataFiles(train, **options), (DataFiles(val, **options) if val else None)
    raise ValueError("the data section needs either name: <built-in dataset> or train: <path to Parquet>; or pass dataset=")


def split_dataset(dataset: Any) -> tuple[Any, Any]:
    """(train, val) from columns / samples (train only), a `(train, val)` pair, or a mapping
    of splits (`train` and `validation`/`val`/`test`)."""
    if isinstance(dataset, tuple) and len(dataset) == 2:
        return dataset
    if isinstance(dataset, Mapping) and "train" in dataset and "input_ids" not in dataset and "text" not in dataset:
        val = next((dataset[k] for k in _VAL_KEYS if k in dataset), None)
        return dataset["train"], val
    return dataset, None


def tokenize_text(data: Any, tokenizer: Any, max_len: int | None) -> Any:
    """Instruction columns (`prompt`/`response`, or `messages`) get `input_ids` and `labels`
    with the prompt masked (data/instructions.py); columns with a `text` column and no
    `input_ids` get `input_ids` from `tokenizer`
    (cut at `max_len`); data files get the tokenizer and a `seq_len` (at most `max_len`), and
    their text or instruction rows are tokenized by Ray Data when the run reads them;
    anything else is returned as it is."""
    if is_instruction_data(data):  # prompt/response or messages columns: the loss on the response only
        return tokenize_instructions(data, tokenizer, max_len)
    if type(data).__name__ == "DataFiles" and tokenizer is not None:  # text, or instruction rows: Ray Data tokenizes them
        if data.seq_len and max_len and data.seq_len > max_len:
            raise ValueError(f"data: seq_len={data.seq_len} is longer than the model's context (max_seq_len={max_len}); use seq_len <= {max_len}")
        return dataclasses.replace(data, tokenizer=tokenizer, seq_len=data.seq_len or max_len)
    if not isinstance(data, Mapping) or "text" not in data or "input_ids" in data:
        return data
    texts = list(data["text"])
    if not all(isinstance(t, str) for t in texts):
        raise TypeError("the 'text' column must hold strings")
    ids = [tokenizer(t, max_length=max_len, truncation=bool(max_len))["input_ids"] for t in texts]
    return {"input_ids": ids, **{k: v for k, v in data.items() if k != "text"}}
