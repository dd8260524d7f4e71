"""Experiment specs: one YAML file naming the model, the data and the TrainingConfig,
parsed and checked once, where it enters.

    model:    {name: gpt, d_model: 128, n_layers: 2}     # built-in, or factory: "pkg.mod:fn"
    data:     {name: addition, train_size: 20000}        # built-in, or train: x.parquet, val: y.parquet
    task:     language_modeling                          # optional; auto-detected if absent
    training: {learning_rate: 3.0e-3, epochs: 5}         # any TrainingConfig field
    peft:     {method: lora, r: 16, alpha: 32}           # adapters (trainyard.models.adapters)
    final:    {epochs: 10}                               # `trainyard run`: the final training's changes
    source:   {sweep: ..., trial_id: ...}                # provenance (a sweep's winner), informational

`key=value` overrides address a section with a dot (`model.d_model=64`); a bare key is a
training field (`epochs=3`). Values are parsed as YAML (`1e-3`, `true`, `[onnx]`).

    spec = load_spec("jobs/configs/addition.yaml", ["epochs=3"])   # an ExperimentSpec, checked
    spec = as_spec({"model": {...}, "training": {...}})            # the same from a dict
    best = spec.with_params({"learning_rate": 1e-3, "model.d_model": 64})   # a sweep's winner
    final = best.final_training()                                  # `final:` applied
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from trainyard import _yaml
from trainyard.engine.config import TrainingConfig
from trainyard.engine.task import TaskSpec
from trainyard.experiment.sections import check_data_section, check_model_section
from trainyard.models.adapters import check_section
from trainyard.storage import is_uri, read_text, relative_to

SECTIONS = ("model", "data", "task", "training", "peft", "final", "source")  # source: provenance, informational
MODEL_PREFIX = "model."  # a parameter named model.<key> sets the model section's <key>
ADAPTER_PREFIX = "peft."  # and peft.<key> the peft section's


@dataclass(frozen=True)
class ExperimentSpec:
    """An experiment config after its one check: its sections as written (what is saved,
    shown and hashed) and the TrainingConfig they make. Specs derived from a checked one (a
    sweep's winner, the final training's) check only their own changes."""

    sections: Mapping[str, Any]
    training: TrainingConfig

    @property
    def model(self) -> dict[str, Any]:
        return dict(self.sections.get("model") or {})

    @property
    def data(self) -> dict[str, Any]:
        return dict(self.sections.get("data") or {})

    @property
    def peft(self) -> dict[str, Any] | None:
        """The adapters' settings, or None: the whole model trains."""
        return dict(self.sections["peft"]) if self.sections.get("peft") is not None else None

    @property
    def task(self) -> str | None:
        return self.sections.get("task")

    @property
    def source(self) -> dict[str, Any]:
        return dict(self.sections.get("source") or {})

    def to_dict(self) -> dict[str, Any]:
        """The sections as YAML-safe data (what a config file of this experiment holds)."""
        return plain(copy.deepcopy(dict(self.sections)))

    def with_params(self, params: Mapping[str, Any]) -> "ExperimentSpec":
        """This spec with a sampled point's values: `model.<key>` into the model section,
        `peft.<key>` into the peft section, the rest into training."""
        sections = copy.deepcopy(dict(self.sections))
        training = {k: v for k, v in params.items() if not k.startswith((MODEL_PREFIX, ADAPTER_PREFIX))}
        model = {k[len(MODEL_PREFIX) :]: v for k, v in params.items() if k.startswith(MODEL_PREFIX)}
        adapters = {k[len(ADAPTER_PREFIX) :]: v for k, v in params.items() if k.startswith(ADAPTER_PREFIX)}
        sections["training"] = {**(sections.get("training") or {}), **training}
        if adapters:
            sections["peft"] = {**(sections.get("peft") or {}), **adapters}
            check_section(sections["peft"])
        if model:
            sections["model"] = {**(sections.get("model") or {}), **model}
            check_model_section(sections["model"])
        return ExperimentSpec(sections, self.training.replace(**training))

    def final_training(self) -> "ExperimentSpec":
        """The spec the final training runs: `final`'s fields applied to training."""
        sections = copy.deepcopy(dict(self.sections))
        final = sections.pop("final", None) or {}
        sections["training"] = {**(sections.get("training") or {}), **final}
        return ExperimentSpec(sections, self.training.replace(**final))

    def with_source(self, source: Mapping[str, Any]) -> "ExperimentSpec":
        return ExperimentSpec({**copy.deepcopy(dict(self.sections)), "source": dict(source)}, self.training)


def parse_spec(spec: Mapping[str, Any], where: str = "the experiment config") -> ExperimentSpec:
    """The one check of an experiment: known sections, the training fields (and `final`'s
    against them), the task, and the model and data sections' keys."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"{where}: an experiment config is a mapping with sections {list(SECTIONS)}, got {spec!r}")
    unknown = set(spec) - set(SECTIONS)
    if unknown:
        raise ValueError(f"{where}: unknown section(s) {sorted(unknown)}; sections are {list(SECTIONS)}")
    sections = {k: v for k, v in spec.items()}
    for name in ("model", "data", "training", "peft", "final", "source"):
        if sections.get(name) is not None and not isinstance(sections[name], Mapping):
            raise ValueError(f"the {name} section must be a mapping, got {sections[name]!r}")
    training = TrainingConfig.from_dict(sections.get("training") or {})
    try:
        training.replace(**(sections.get("final") or {}))
    except (TypeError, ValueError) as e:
        raise type(e)(f"the final section: {e}") from None
    if sections.get("task"):
        TaskSpec(name=sections["task"])
    check_model_section(sections.get("model") or {})
    check_data_section(sections.get("data") or {})
    if sections.get("peft") is not None:
        check_section(sections["peft"])
    return ExperimentSpec(sections, training)


DATA_FILES = ("train", "val")  # the data section's keys that name files


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentSpec:
    """The experiment in the YAML file at `path`, with `key=value` overrides, checked."""
    spec = _load_config(path) or {}
    if not isinstance(spec, Mapping):
        raise ValueError(f"{path}: an experiment config is a mapping with sections {list(SECTIONS)}")
    if not is_uri(path):  # a config in object storage names its data by URI or absolute path
        spec = _data_paths_from(spec, Path(path).parent)
    return parse_spec(apply_overrides(spec, overrides), where=str(path))


def _load_config(path: str | Path) -> Any:
    """The YAML of a config file, a local path or a URI (a sweep's best_config.yaml in s3://...)."""
    if not is_uri(path):
        return _yaml.load_file(path, "experiment config")
    text = read_text(path)
    if text is None:
        raise FileNotFoundError(f"experiment config {path} not found")
    return _yaml.load(text, str(path))


def _data_paths_from(spec: Mapping[str, Any], folder: Path) -> Mapping[str, Any]:
    """The data files a config names, relative to the config's own folder (as a reader of the
    file expects, from any working directory), made absolute; paths given as overrides on
    the command line stay relative to the working directory."""
    data = spec.get("data")
    if not isinstance(data, Mapping) or not any(isinstance(data.get(k), str) for k in DATA_FILES):
        return spec
    resolved = {k: relative_to(folder, v) if k in DATA_FILES and isinstance(v, str) else v for k, v in data.items()}
    return {**spec, "data": resolved}


def apply_overrides(spec: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of the spec's sections with `key=value` overrides set (not checked yet)."""
    spec = copy.deepcopy(dict(spec))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} must look like key=value (e.g. epochs=3 or model.d_model=64)")
        section, dot, field = key.partition(".")
        if not dot:
            section, field = "training", key
        if section not in SECTIONS or section in ("task", "source"):
            raise ValueError(f"override {item!r}: section {section!r} is not one of model, data, training, peft, final")
        if spec.get(section) is None:  # absent, or written empty (`training:`)
            spec[section] = {}
        elif not isinstance(spec[section], Mapping):
            raise ValueError(
                f"override {item!r}: the {section} section is {spec[section]!r}, not a mapping of settings; "
                f"write it as {section}: {{name: {spec[section]}}} to set {section}.{field} too"
            )
        spec[section][field] = _yaml.load(raw, f"override {item!r}")
    return spec


def as_spec(config: Any) -> ExperimentSpec:
    """An experiment from a spec (checked already, or a dict of sections), a bare model
    section, or a TrainingConfig."""
    if isinstance(config, ExperimentSpec):
        return config
    if isinstance(config, TrainingConfig):
        return ExperimentSpec({"training": config.to_dict()}, config)
    if not isinstance(config, Mapping):
        raise TypeError(
            f"config must be an experiment spec (a dict with sections {list(SECTIONS)}, as build_training_config "
            f"returns) or a TrainingConfig, got {type(config).__name__}"
        )
    if not set(config) & set(SECTIONS):  # a bare model section
        return parse_spec({"model": dict(config)})
    return parse_spec(config)


def plain(value: Any) -> Any:
    """YAML-safe containers: tuples become lists, keys strings."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
