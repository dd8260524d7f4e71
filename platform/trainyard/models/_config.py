from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence


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


def check_positive_ints(config: Any, names: Sequence[str]) -> None:
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{type(config).__name__}.{name}={value!r} is invalid: must be an integer >= 1")
