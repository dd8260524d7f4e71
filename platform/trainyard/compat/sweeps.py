"""Seed 004's `training.hpo`, translated onto trainyard: sweeps driven by an experiment spec,
and the best config of a finished one.

    space = create_search_space({"search_space": {"learning_rate": {"loguniform": [1e-4, 1e-2]}}})
    study = run_local_hpo_sweep("gpt", space, dataset, config=spec, n_trials=8)
    best = extract_best_config_from_study(study)     # an experiment spec, `source` filled in

The study is the Optuna study of a `trainyard.hpo.sweep` (every trial, COMPLETE / PRUNED /
FAIL); its user attributes (`trainyard.*`) carry what the best config needs: the base
spec, the sweep directory, the best trial and its checkpoint, and the data fingerprint.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

from trainyard.experiment import as_spec
from trainyard.hpo.experiments import sweep_experiment
from trainyard.hpo.space import SearchSpace, load_search_space

_DIRECTIONS = {"minimize": "min", "maximize": "max", "min": "min", "max": "max"}


def create_search_space(hpo_config: str | Path | Mapping[str, Any] | SearchSpace) -> SearchSpace:
    """A validated search space from a `tune_spaces/*.yaml` path or dict (`metric`,
    `mode`, `params`), or from an HPO config that nests it: `{search_space: {...params},
    metric: val/loss, direction: minimize}`."""
    if isinstance(hpo_config, SearchSpace):
        return hpo_config
    if isinstance(hpo_config, Mapping) and "search_space" in hpo_config:
        nested = hpo_config["search_space"]
        if isinstance(nested, Mapping) and "params" in nested:
            return load_search_space(nested)
        direction = hpo_config.get("mode", hpo_config.get("direction", "min"))
        if direction not in _DIRECTIONS:
            raise ValueError(f"direction={direction!r} must be one of {sorted(_DIRECTIONS)}")
        return load_search_space({"params": nested, "metric": hpo_config.get("metric", "val/loss"), "mode": _DIRECTIONS[direction]})
    return load_search_space(hpo_config)


def run_local_hpo_sweep(
    backbone: str,
    search_space: Any,
    dataset: Any = None,
    *,
    config: Mapping[str, Any] | None = None,
    n_trials: int = 10,
    output_dir: str | Path = "runs",
    name: str | None = None,
    seed: int = 0,
    scheduler: str = "asha",
    max_concurrent: int | None = None,
):
    """A trainyard sweep (Ray Tune + Optuna, on a local Ray unless one is running) of the
    `backbone` model; returns its Optuna study.

    `backbone`: a built-in model name (`"gpt"`) or a local Hugging Face model directory.
    `config`: the experiment spec the trials start from (training fields, model settings,
    data). `dataset`: as for `train_model` (None: the spec's data section).
    """
    space = create_search_space(search_space)
    spec = as_spec(_with_backbone(dict(config or {}), backbone))
    result = sweep_experiment(
        spec, space, dataset, num_samples=n_trials, max_concurrent=max_concurrent, scheduler=scheduler,
        storage_path=output_dir, name=name, seed=seed,
    )
    study = result.study
    study.set_user_attr("trainyard.base_spec", _plain_spec(spec.to_dict()))
    study.set_user_attr("trainyard.data_fingerprint", result.data_fingerprint)
    return study


def extract_best_config_from_study(study: Any) -> dict[str, Any]:
    """The experiment spec of the best trial: the sweep's base spec with the winning
    parameters (`model.*` into the model section), and a `source` section naming the sweep,
    trial, parameters, metric value, checkpoint and data fingerprint.

    Takes the study of a trainyard sweep (or a `SweepResult`); any Optuna study works too,
    its best parameters then applied to an empty spec."""
    if hasattr(study, "study") and hasattr(study, "best_params"):  # a SweepResult
        study = study.study
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    if not complete:
        states = sorted({t.state.name for t in study.trials}) or ["no trials"]
        raise ValueError(f"study {study.study_name!r} has no COMPLETE trial ({', '.join(states)}); nothing to take a best config from")
    attrs = dict(study.user_attrs)
    base = copy.deepcopy(attrs.get("trainyard.base_spec") or {})
    if not base and "trainyard.base_training_config" in attrs:  # a plain sweep(): its base TrainingConfig
        base["training"] = dict(attrs["trainyard.base_training_config"])
    best = study.best_trial
    sweep_path = attrs.get("trainyard.sweep_path")
    return as_spec(base).with_params(best.params).with_source({
        "sweep": Path(sweep_path).name if sweep_path else study.study_name,
        "sweep_path": sweep_path,
        "trial_id": attrs.get("trainyard.best_trial", best.number),
        "params": dict(best.params),
        "metric": attrs.get("trainyard.metric"),
        "value": best.value,
        "checkpoint": attrs.get("trainyard.best_checkpoint"),
        "data_fingerprint": attrs.get("trainyard.data_fingerprint"),
    }).to_dict()


def _with_backbone(spec: dict[str, Any], backbone: str) -> dict[str, Any]:
    if not isinstance(backbone, str) or not backbone:
        raise TypeError(f"backbone must be a built-in model name or a local model directory, got {backbone!r}")
    model = {k: v for k, v in (spec.get("model") or {}).items() if k not in ("name", "name_or_path", "factory")}
    if Path(backbone).expanduser().is_dir():
        model["name_or_path"] = str(Path(backbone).expanduser().resolve())
    else:
        model["name"] = backbone
    return {**spec, "model": model}


def _plain_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec without in-memory data (the study keeps settings, not datasets)."""
    return {k: copy.deepcopy(v) for k, v in spec.items() if k != "data" or _is_settings(v)}


def _is_settings(data: Any) -> bool:
    return isinstance(data, Mapping) and all(isinstance(v, (str, int, float, bool, type(None))) for v in data.values())
