"""Hugging Face models from a local directory (needs `pip install transformers`).

Only local directories are read (`local_files_only=True`): nothing is downloaded.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable


def check_model_dir(name_or_path: str | Path) -> Path:
    path = Path(name_or_path).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"name_or_path={str(name_or_path)!r} is not a local Hugging Face model directory (no config.json there); "
            "trainyard loads local directories only: save one with model.save_pretrained(dir) and "
            "tokenizer.save_pretrained(dir)"
        )
    return path.resolve()


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ImportError(
            "a Hugging Face model directory needs the transformers package: pip install 'trainyard[hf]' "
            "(or pip install transformers)"
        ) from None
    transformers.logging.set_verbosity_error()
    return transformers


def load_model(name_or_path: str, task: str | None, model_config: Any = None):
    """The model in `name_or_path`: a causal LM, or a sequence classifier for task
    'classification' / 'regression' (`num_labels` from the model config if given)."""
    transformers = _transformers()
    path = check_model_dir(name_or_path)
    if task in ("classification", "regression"):
        labels = 1 if task == "regression" else (model_config or {}).get("num_labels")
        kwargs = {"num_labels": labels} if labels else {}
        return transformers.AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True, **kwargs)
    return transformers.AutoModelForCausalLM.from_pretrained(path, local_files_only=True)


def load_tokenizer(name_or_path: str):
    """The directory's tokenizer; one without a pad token pads with its end-of-sequence token."""
    transformers = _transformers()
    tokenizer = transformers.AutoTokenizer.from_pretrained(check_model_dir(name_or_path), local_files_only=True)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def model_builder(name_or_path: str, task: str | None) -> Callable[[Any], Any]:
    """model config -> model; picklable, so it can travel to Ray workers and trials."""
    return functools.partial(load_model, str(check_model_dir(name_or_path)), task)
