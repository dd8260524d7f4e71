"""The model's config: whatever the user passes (a dict, a SimpleNamespace, a dataclass, a
Hugging Face config, any object), read the same way everywhere."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Mapping


def model_config_value(config: Any, name: str) -> Any:
    if config is None:
        return None
    if isinstance(config, Mapping):
        return config.get(name)
    return getattr(config, name, None)


def model_config_dict(config: Any) -> Any:
    """The model config as plain JSON data where it can be (for checkpoints, W&B, export)."""
    if config is None:
        return None
    if isinstance(config, SimpleNamespace):
        config = vars(config)
    elif not isinstance(config, Mapping) and hasattr(config, "to_dict"):
        config = config.to_dict()
    elif not isinstance(config, Mapping) and hasattr(config, "__dict__"):
        config = vars(config)
    if isinstance(config, Mapping):
        return {str(k): v for k, v in config.items() if isinstance(v, (str, int, float, bool, type(None), list, tuple))}
    return None
