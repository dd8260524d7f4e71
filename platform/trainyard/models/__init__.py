"""Built-in models, built from a config (dict, namespace or object) by name."""

from __future__ import annotations

from typing import Any

from trainyard.models.classifier import ClassifierConfig, SequenceClassifier
from trainyard.models.gpt import GPT, GPTConfig

MODELS = {"gpt": GPT, "classifier": SequenceClassifier}
CONFIGS = {"gpt": GPTConfig, "classifier": ClassifierConfig}  # each model's config, with its defaults


def build_model(name: str, config: Any = None, **overrides: Any):
    """`build_model("gpt", {"vocab_size": 16, "d_model": 64})`."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: built-in models are {sorted(MODELS)}")
    return MODELS[name](config, **overrides)


__all__ = ["CONFIGS", "GPT", "GPTConfig", "SequenceClassifier", "ClassifierConfig", "MODELS", "build_model"]
