"""Experiment specs: one YAML file naming the model, the data and the TrainingConfig.

    model:    {name: gpt, d_model: 128, n_layers: 2}     # built-in, or factory: "pkg.mod:fn"
    data:     {name: addition, train_size: 20000}        # built-in, or train: x.parquet, val: y.parquet
    task:     language_modeling                          # optional; auto-detected if absent
    training: {learning_rate: 3.0e-3, epochs: 5}         # any TrainingConfig field
    final:    {epochs: 10}                               # `trainyard run`: the final training's changes

`key=value` overrides address a section with a dot (`model.d_model=64`); a bare key is a
training field (`epochs=3`). Values are parsed as YAML (`1e-3`, `true`, `[onnx]`).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping, Sequence

from trainyard import _yaml
from trainyard.engine.config import TrainingConfig

SECTIONS = ("model", "data", "task", "training", "final", "source")  # source: provenance, informational


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    path = Path(path)
    spec = _yaml.load_file(path, "experiment config") or {}
    if not isinstance(spec, Mapping):
        raise ValueError(f"{path}: an experiment config is a mapping with sections {list(SECTIONS)}")
    unknown = set(spec) - set(SECTIONS)
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {sorted(unknown)}; sections are {list(SECTIONS)}")
    return apply_overrides(dict(spec), overrides)


def apply_overrides(spec: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
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
        spec[section][field] = _yaml.load(raw, f"override {item!r}")
    return spec


def as_spec(config: Any) -> dict[str, Any]:
    """An experiment spec from a spec, a bare model section, or a TrainingConfig."""
    if isinstance(config, TrainingConfig):
        return {"training": config.to_dict()}
    if not isinstance(config, Mapping):
        raise TypeError(
            f"config must be an experiment spec (a dict with sections {list(SECTIONS)}, as build_training_config "
            f"returns) or a TrainingConfig, got {type(config).__name__}"
        )
    if not set(config) & set(SECTIONS):  # a bare model section
        return {"model": dict(config)}
    return dict(config)


def training_config(spec: Mapping[str, Any]) -> TrainingConfig:
    """The spec's `training` section as a validated TrainingConfig (its `final` changes,
    which only `trainyard run`'s final training applies, checked against it)."""
    config = TrainingConfig.from_dict(spec.get("training") or {})
    final = spec.get("final") or {}
    if not isinstance(final, Mapping):
        raise ValueError(f"the final section must be a mapping of training fields (e.g. {{epochs: 10}}), got {final!r}")
    try:
        config.replace(**final)
    except (TypeError, ValueError) as e:
        raise type(e)(f"the final section: {e}") from None
    return config


def final_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec the final training runs: `final`'s fields applied to `training`."""
    out = copy.deepcopy(dict(spec))
    out["training"] = {**(out.get("training") or {}), **(out.pop("final", None) or {})}
    return out


def plain(value: Any) -> Any:
    """YAML-safe containers: tuples become lists, keys strings."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
