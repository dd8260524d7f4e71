from __future__ import annotations

import dataclasses
from typing import Any, Mapping


def config_fields(cls: type, config: Any, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of dataclass `cls` found in `config` (dict, namespace or object) + overrides."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = set(overrides) - set(names)
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {sorted(unknown)}; fields are {names}")
    if config is None:
        found = {}
    elif isinstance(config, Mapping):
        found = {k: config[k] for k in names if k in config}
    else:
        found = {k: getattr(config, k) for k in names if hasattr(config, k)}
    return {**found, **overrides}
