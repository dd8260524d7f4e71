"""Search spaces: `tune_spaces/*.yaml`, validated before any Ray resource is requested.

    metric: val/loss          # any metrics_summary column
    mode: min
    params:
      learning_rate: {loguniform: [1.0e-5, 1.0e-2]}
      batch_size:    {choice: [16, 32, 64]}
      warmup_steps:  {randint: [0, 200]}       # Tune's randint: the upper bound is excluded
      model.d_model: {choice: [64, 128]}       # model.* keys go to the model config

Distributions: uniform [low, high], loguniform [low, high], quniform [low, high, q],
randint [low, high) , qrandint [low, high, q] (inclusive), choice [values...].
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from trainyard import _yaml
from trainyard.engine.config import FIELD_NAMES, TrainingConfig
from trainyard.engine.fields import check_field

DISTRIBUTIONS = ("uniform", "loguniform", "quniform", "randint", "qrandint", "choice")
MODES = ("min", "max")
# Fields a sweep owns or that make no sense to search.
_NOT_SEARCHABLE = {"checkpoint_dir", "checkpoint_every_n_steps", "wandb_project", "device", "export_bundle", "export_formats", "export_tolerance"}


ADAPTER_PREFIX = "peft."  # a parameter named peft.<key> sets the adapters' <key> (`peft` section)
ADAPTER_KEY = "peft"  # where a trial's model config carries them to the adapters' builder


@dataclass(frozen=True)
class Param:
    name: str
    kind: str
    args: tuple

    @property
    def is_model(self) -> bool:
        """Whether it goes to the model factory: a model config key, or an adapter setting."""
        return self.name.startswith(("model.", ADAPTER_PREFIX))

    def sample_values(self) -> list[Any]:
        """Values at the edges of the range (or every choice), for type checks."""
        if self.kind == "choice":
            return list(self.args)
        if self.kind in ("randint",):
            return [self.args[0], self.args[1] - 1]
        return [self.args[0], self.args[1]]

    def optuna_distribution(self):
        import optuna.distributions as d

        if self.kind == "choice":
            return d.CategoricalDistribution(list(self.args))
        low, high = self.args[0], self.args[1]
        if self.kind == "uniform":
            return d.FloatDistribution(low, high)
        if self.kind == "loguniform":
            return d.FloatDistribution(low, high, log=True)
        if self.kind == "quniform":
            return d.FloatDistribution(low, high, step=self.args[2])
        if self.kind == "randint":
            return d.IntDistribution(low, high - 1)
        return d.IntDistribution(low, high, step=self.args[2])  # qrandint, inclusive


@dataclass(frozen=True)
class SearchSpace:
    params: tuple[Param, ...]
    metric: str = "val/loss"
    mode: str = "min"
    source: str = "<dict>"

    def optuna_space(self) -> dict[str, Any]:
        return {p.name: p.optuna_distribution() for p in self.params}

    def to_dict(self) -> dict[str, Any]:
        """The space as its YAML reads (`load_search_space` takes it back)."""
        return {"metric": self.metric, "mode": self.mode, "params": {p.name: {p.kind: list(p.args)} for p in self.params}}

    def split(self, sampled: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(TrainingConfig overrides, model config overrides) of one sampled point."""
        training = {k: v for k, v in sampled.items() if not k.startswith(("model.", ADAPTER_PREFIX))}
        model = {k[len("model.") :]: v for k, v in sampled.items() if k.startswith("model.")}
        adapters = {k[len(ADAPTER_PREFIX) :]: v for k, v in sampled.items() if k.startswith(ADAPTER_PREFIX)}
        if adapters:  # read by the adapters' builder (trainyard.models.adapters), under this one key
            model[ADAPTER_KEY] = adapters
        return training, model

    def check_model_keys(self, model_config: Mapping[str, Any] | None) -> None:
        """model.* parameters must name keys the model config has (when it is a mapping)."""
        if not isinstance(model_config, Mapping):
            return
        for p in self.params:
            key = p.name[len("model.") :]
            if p.name.startswith("model.") and key not in model_config:
                close = difflib.get_close_matches(key, [str(k) for k in model_config], n=1)
                hint = f"; did you mean 'model.{close[0]}'?" if close else f"; the model config has {sorted(model_config)}"
                raise ValueError(f"{self.source}: parameter {p.name!r} is not a key of the model config{hint}")


def load_search_space(source: str | Path | Mapping[str, Any]) -> SearchSpace:
    """Load and validate a search space from a YAML path or a dict."""
    if isinstance(source, Mapping):
        data, name = dict(source), "<dict>"
    else:
        path = Path(source)
        data, name = _yaml.load_file(path, "search space") or {}, str(path)
    if not isinstance(data, Mapping):
        raise ValueError(f"{name}: a search space is a mapping with keys metric, mode, params")
    unknown = set(data) - {"metric", "mode", "params"}
    if unknown:
        raise ValueError(f"{name}: unknown key(s) {sorted(unknown)}; a search space has metric, mode and params")
    metric = data.get("metric", "val/loss")
    mode = data.get("mode", "min")
    if not isinstance(metric, str) or "/" not in metric:
        raise ValueError(f"{name}: metric={metric!r} must be a metrics_summary column such as 'val/loss' or 'val/accuracy'")
    if mode not in MODES:
        raise ValueError(f"{name}: mode={mode!r} must be 'min' or 'max'")
    params = data.get("params")
    if not isinstance(params, Mapping) or not params:
        raise ValueError(f"{name}: params must map at least one parameter to a distribution, e.g. learning_rate: {{loguniform: [1.0e-5, 1.0e-2]}}")
    return SearchSpace(tuple(_param(name, k, v) for k, v in params.items()), metric, mode, name)


def _param(source: str, key: str, spec: Any) -> Param:
    where = f"{source}: parameter {key!r}"
    if key.startswith(ADAPTER_PREFIX):
        if key in (ADAPTER_PREFIX, ADAPTER_PREFIX + "method", ADAPTER_PREFIX + "merge_adapters"):
            raise ValueError(f"{where}: name a setting of the adapters after 'peft.' (r, alpha, dropout, ...); the method and the export are not searched")
    elif not key.startswith("model."):
        if key not in FIELD_NAMES:
            close = difflib.get_close_matches(key, FIELD_NAMES, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "TrainingConfig fields, or model.<key> for the model config"
            raise ValueError(f"{where} is not a TrainingConfig field; {hint}")
        if key in _NOT_SEARCHABLE:
            raise ValueError(f"{where} cannot be searched: the sweep sets it")
    elif key == "model.":
        raise ValueError(f"{where}: name the model config key after 'model.'")
    if not isinstance(spec, Mapping) or len(spec) != 1:
        raise ValueError(f"{where} must be one distribution, e.g. {{loguniform: [1.0e-5, 1.0e-2]}}; got {spec!r}")
    ((kind, args),) = spec.items()
    if kind not in DISTRIBUTIONS:
        close = difflib.get_close_matches(str(kind), DISTRIBUTIONS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"{where}: unknown distribution {kind!r}; {hint}distributions are {list(DISTRIBUTIONS)}")
    if not isinstance(args, (list, tuple)):
        raise ValueError(f"{where}: {kind} takes a list, got {args!r}")
    args = tuple(args)
    if kind == "choice":
        if not args:
            raise ValueError(f"{where}: choice needs at least one value")
    else:
        _check_range(where, kind, args)
    param = Param(key, kind, args)
    if not param.is_model:
        _check_types(where, param)
    return param


def _check_range(where: str, kind: str, args: tuple) -> None:
    arity = 3 if kind in ("quniform", "qrandint") else 2
    shape = "[low, high, q]" if arity == 3 else "[low, high]"
    if len(args) != arity or not all(_is_number(a) for a in args):
        raise ValueError(f"{where}: {kind} takes {shape} numbers, got {list(args)}")
    if kind in ("randint", "qrandint") and not all(isinstance(a, int) and not isinstance(a, bool) for a in args):
        raise ValueError(f"{where}: {kind} takes integers, got {list(args)}")
    low, high = args[0], args[1]
    if not low < high:
        raise ValueError(f"{where}: {kind} needs low < high, got low={low}, high={high}")
    if kind == "loguniform" and low <= 0:
        raise ValueError(f"{where}: loguniform needs bounds > 0 (it samples the logarithm), got low={low}")
    if arity == 3 and not args[2] > 0:
        raise ValueError(f"{where}: {kind} needs q > 0, got q={args[2]}")


def _check_types(where: str, param: Param) -> None:
    """Every value the distribution can produce must be valid for the field."""
    integer_field = isinstance(getattr(TrainingConfig(), param.name), int) and not isinstance(getattr(TrainingConfig(), param.name), bool)
    if integer_field and param.kind in ("uniform", "loguniform", "quniform"):
        raise ValueError(f"{where}: the field takes integers, but {param.kind} samples floats; use randint, qrandint or choice")
    for value in param.sample_values():
        try:
            check_field(param.name, value)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{where}: value {value!r} is not valid for the field ({e})") from None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def shipped_spaces(directory: str | Path) -> Iterable[Path]:
    return sorted(Path(directory).glob("*.yaml"))
