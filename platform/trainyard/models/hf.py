"""Hugging Face models and their tokenizers, from a local directory or a Hub id (needs
`pip install transformers`).

    model: {name: hf, name_or_path: gpt2, revision: main, dtype: bfloat16}

A local directory (one with a config.json) is read as it is, never downloaded to. A Hub id
(`gpt2`, `org/name`) goes through Hugging Face's own cache and conventions, as any
`from_pretrained` does: `HF_HOME` / `HF_HUB_CACHE` say where the cache is, `HF_HUB_OFFLINE=1`
uses only what is there (an offline cluster), a token from `hf auth login` or `HF_TOKEN`
reads private models. The id is checked once where the command runs (one line naming it when
it cannot be had); each Ray worker then resolves it through its own node's cache.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Callable

DTYPES = ("float32", "bfloat16", "float16", "auto")


def check_model_dir(name_or_path: str | Path) -> Path:
    path = Path(name_or_path).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"name_or_path={str(name_or_path)!r} is not a local Hugging Face model directory (no config.json there): give "
            "a directory that model.save_pretrained(dir) wrote, or a Hub id such as 'gpt2' or 'org/name'"
        )
    return path.resolve()


def is_local(name_or_path: str | Path) -> bool:
    """A path on this machine (it exists, or is written as a path: `./x`, `/x`, `~/x`), not a Hub id."""
    text = str(name_or_path)
    return Path(text).expanduser().exists() or text.startswith((".", "/", "~")) or os.sep in text and text.count("/") > 1


def resolve(name_or_path: str | Path, revision: str | None = None) -> str:
    """What `from_pretrained` is given: a local directory (checked), or a Hub id that Hugging
    Face's cache holds or its Hub serves (checked by fetching its config.json, which is small);
    a missing one says why in one line."""
    if is_local(name_or_path):
        return str(check_model_dir(name_or_path))
    repo_id = str(name_or_path)
    _transformers()
    import huggingface_hub
    from huggingface_hub import errors

    try:
        huggingface_hub.hf_hub_download(repo_id, "config.json", revision=revision)
    except errors.LocalEntryNotFoundError:
        raise FileNotFoundError(
            f"Hugging Face model {repo_id!r}{_at(revision)} is not in the cache ({huggingface_hub.constants.HF_HUB_CACHE}) and "
            f"{_why_not_downloaded()}: fetch it where the Hub is reachable (`hf download {repo_id}`, with the same HF_HOME), "
            "or give a local directory"
        ) from None
    except errors.RevisionNotFoundError:
        raise FileNotFoundError(f"Hugging Face model {repo_id!r} has no revision {revision!r}: give a branch, tag or commit it has") from None
    except (errors.RepositoryNotFoundError, errors.GatedRepoError) as e:
        raise FileNotFoundError(
            f"Hugging Face model {repo_id!r} is not on the Hub, or is private or gated ({type(e).__name__}): check the id, or "
            "log in (`hf auth login`, or HF_TOKEN) with an account that may read it"
        ) from None
    return repo_id


def _at(revision: str | None) -> str:
    return f" at revision {revision!r}" if revision else ""


def _why_not_downloaded() -> str:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set, so it is not downloaded"
    return "the Hub could not be reached to download it (set HF_HUB_OFFLINE=1 to use only the cache)"


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ImportError(
            "a Hugging Face model needs the transformers package: pip install 'trainyard[hf]' (or pip install transformers)"
        ) from None
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # a "Loading weights" bar from every worker, every run
    return transformers


def _options(source: str, revision: str | None, dtype: str | None = None) -> dict[str, Any]:
    options: dict[str, Any] = {"local_files_only": True} if Path(source).is_dir() else {"revision": revision}
    if dtype is not None:
        import torch

        options["dtype"] = dtype if dtype == "auto" else getattr(torch, dtype)
    return options


def load_model(name_or_path: str, task: str | None, model_config: Any = None, revision: str | None = None, dtype: str | None = None):
    """The model at `name_or_path` (a directory or a Hub id): a causal LM, or a sequence
    classifier for task 'classification' / 'regression' (`num_labels` from the model config if
    given). `dtype`: the weights' dtype (float32 unless given; 'auto' takes the checkpoint's)."""
    transformers = _transformers()
    options = _options(name_or_path, revision, dtype)
    if task in ("classification", "regression"):
        labels = 1 if task == "regression" else (model_config or {}).get("num_labels")
        kwargs = {"num_labels": labels} if labels else {}
        return transformers.AutoModelForSequenceClassification.from_pretrained(name_or_path, **options, **kwargs)
    return transformers.AutoModelForCausalLM.from_pretrained(name_or_path, **options)


def load_tokenizer(name_or_path: str, revision: str | None = None):
    """The model's own tokenizer; one without a pad token pads with its end-of-sequence token."""
    transformers = _transformers()
    source = resolve(name_or_path, revision)
    tokenizer = transformers.AutoTokenizer.from_pretrained(source, **_options(source, revision))
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def model_builder(name_or_path: str, task: str | None, revision: str | None = None, dtype: str | None = None) -> Callable[[Any], Any]:
    """model config -> model; picklable, so it can travel to Ray workers and trials (a Hub id
    travels as the id: each node reads its own cache)."""
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"model.dtype={dtype!r} must be one of {list(DTYPES)} (the weights' dtype; float32 unless given)")
    return functools.partial(load_model, resolve(name_or_path, revision), task, revision=revision, dtype=dtype)
