"""`sweep(...)`: Ray Tune trials driven by a seeded Optuna TPE searcher.

Each trial runs the engine loop in the trial's own process (a `TuneTrialContext`), or,
with `workers_per_trial > 1`, a nested Ray Train run whose rank-0 metrics Tune receives
through `TuneReportCallback`. One report per epoch feeds the scheduler (ASHA by default);
every report carries the engine checkpoint, so a paused or restarted trial resumes. A
named sweep that already exists under `storage_path` is restored, finished trials kept.
"""

from __future__ import annotations

import copy
import difflib
import functools
import inspect
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from trainyard._logging import get_logger, own_process_logs, quiet_exits, show_logs
from trainyard._trust import check_private, make_private_dir
from trainyard.engine.config import TrainingConfig
from trainyard.engine.data.inputs import as_dataset
from trainyard.engine.loop import TrainingLoop
from trainyard.engine.metrics import MetricSums
from trainyard.engine.model_config import model_config_dict
from trainyard.engine.task import as_task_spec, detect_task
from trainyard.engine.telemetry import TELEMETRY_KEYS
from trainyard.execution.configs import scaling_config, trial_run_config
from trainyard.execution.contexts import TuneTrialContext
from trainyard.execution.ingest import is_ray_data, resolve, run_inputs
from trainyard.execution.ray_env import check_importable, check_satisfiable, cluster_resources, ensure_ray, verbose
from trainyard.execution.remote import absolute, check_picklable, run_name
from trainyard.hpo.report import trial_number, write_outputs
from trainyard.hpo.space import SearchSpace, load_search_space
from trainyard.storage import default_storage, folder_name, is_local, read_text, write_text
from trainyard.trainer import Trainer

log = get_logger("trainyard.hpo")
SCHEDULERS = ("asha", "median", "none")
SCHEDULER_STATE = "scheduler_state.json"  # in the sweep folder: what ASHA has seen and decided
_RAY_RESOURCE = {"cpu": "CPU", "gpu": "GPU"}  # resources_per_trial's keys, as Ray names them


@dataclass
class SweepResult:
    best_config: TrainingConfig  # the base TrainingConfig with the winning parameters
    best_params: dict[str, Any]  # the winning sampled point (model.* keys included)
    best_metrics: dict[str, Any]  # the best trial's last reported metrics
    best_checkpoint: str | None  # directory of the best trial's latest checkpoint
    dataframe: Any  # pandas: one row per trial, params and last metrics
    study: Any  # optuna.Study: every trial, COMPLETE / PRUNED / FAIL
    path: str  # the sweep directory (results, best_config.yaml, plots)
    metric: str = "val/loss"
    mode: str = "min"
    best_trial: str | None = None  # the best trial's Tune id
    plots: list[str] = field(default_factory=list)
    data_fingerprint: str | None = None  # of the data the trials trained on, where it is known (sweep_experiment)

    def best_params_model(self) -> dict[str, Any]:
        """The winning model.* parameters, as model config keys."""
        return {k[len("model.") :]: v for k, v in self.best_params.items() if k.startswith("model.")}


@dataclass
class _TrialInputs:
    """What every trial of a sweep gets (one copy, shipped by `tune.with_parameters`)."""

    model_factory: Callable
    config: Any
    train_data: Any
    val_data: Any
    base: TrainingConfig
    task_spec: Any
    space: SearchSpace
    workers_per_trial: int
    use_gpu: bool
    checkpoint_every_epoch: bool


def sweep(
    model_factory: Callable,
    config: Any,
    train_data: Any,
    val_data: Any = None,
    *,
    space: str | Path | Mapping[str, Any] | SearchSpace,
    training_config: TrainingConfig | None = None,
    task_spec: Any = None,
    num_samples: int = 10,
    max_concurrent: int | None = None,
    scheduler: str = "asha",
    resources_per_trial: Mapping[str, float] | None = None,
    workers_per_trial: int = 1,
    storage_path: str | Path | None = None,
    name: str | None = None,
    seed: int = 0,
    max_failures: int = 0,
    checkpoint_every_epoch: bool = True,
    allow_shared_storage: bool = False,
    log_epochs: bool = True,
) -> SweepResult:
    """Search `space` with `num_samples` trials; see the module docstring.

    The sweep folder is created owner-only; resuming from one that another user owns or
    can write is refused (Ray Tune unpickles its state) unless `allow_shared_storage=True`.

    `max_failures` > 0 retries a trial that raised, from its last checkpoint; with the
    default 0 it is recorded as failed and the sweep goes on. `checkpoint_every_epoch=False`
    hands Tune a trial's checkpoint only when it finishes (faster for small models; a
    retried or resumed trial then starts over); with workers_per_trial > 1 every epoch's
    checkpoint is kept regardless. `log_epochs=False` logs each trial once, when it ends,
    instead of once per epoch.
    """
    show_logs()
    if not isinstance(checkpoint_every_epoch, bool):
        raise TypeError(f"checkpoint_every_epoch={checkpoint_every_epoch!r} must be True or False")
    space = space if isinstance(space, SearchSpace) else load_search_space(space)
    base = training_config or TrainingConfig()
    _validate(space, base, model_factory, config, val_data, num_samples, scheduler, workers_per_trial, max_concurrent)
    _check_trial_resources(resources_per_trial)
    _check_metric(space, task_spec, train_data)
    _check_model_values(space, model_factory, config)

    from ray import tune

    storage, name = absolute(storage_path or default_storage()), folder_name(name, "sweep name") if name else run_name("sweep")
    sweep_dir = _sweep_folder(storage, name, allow_shared_storage)
    ensure_ray()
    _quiet_optuna()
    resources = dict(resources_per_trial or {"cpu": 1})
    _check_resources(resources, workers_per_trial)
    # One copy for every trial: Parquet the trials stream, or Ray Data blocks / in-memory data put into the object store once.
    train_data, val_data = run_inputs(train_data, val_data, config, task_spec, on_ray=True, storage=storage)
    payload = _TrialInputs(
        model_factory, config, train_data, val_data, base.replace(checkpoint_every_n_steps=None),
        task_spec, space, workers_per_trial, bool(resources.get("gpu")), checkpoint_every_epoch,
    )
    check_importable("the model factory and its config", check_picklable("model_factory", model_factory), check_picklable("config", config))
    trainable = tune.with_resources(tune.with_parameters(_trial, payload=payload), resources)
    table = _live_table(space, base.epochs, log_epochs)
    if tune.Tuner.can_restore(sweep_dir):
        log.info("resuming sweep %s (finished trials are kept)", sweep_dir)
        tuner = tune.Tuner.restore(sweep_dir, trainable=trainable, resume_unfinished=True, resume_errored=False)
    else:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=_searcher(space, seed, max_concurrent or _default_concurrency(resources, workers_per_trial)),
                scheduler=_scheduler(scheduler, base.epochs, f"{sweep_dir}/{SCHEDULER_STATE}"), num_samples=num_samples, metric=space.metric, mode=space.mode,
                reuse_actors=workers_per_trial == 1,  # a fresh actor per trial costs ~2 s
            ),
            run_config=tune.RunConfig(name=name, storage_path=storage, callbacks=[table], verbose=0, failure_config=tune.FailureConfig(max_failures=max_failures)),
        )
    result = _collect(tuner.fit(), space, base, sweep_dir)
    write_outputs(result)
    table.summary(result)
    return result


def _sweep_folder(storage: str, name: str, allow_shared_storage: bool) -> str:
    """`<storage>/<name>`, created owner-only where it is local: Tuner.restore unpickles what
    is there, so a folder that another user owns or can write is refused."""
    sweep_dir = f"{storage.rstrip('/')}/{name}"
    if is_local(sweep_dir):
        make_private_dir(Path(sweep_dir))
        check_private([Path(sweep_dir), *Path(sweep_dir).glob("*.pkl"), *Path(sweep_dir).glob("*.json")],
                      "the sweep folder", allow=allow_shared_storage)
    return sweep_dir


def _check_resources(resources: Mapping[str, float], workers_per_trial: int) -> None:
    """The cluster can run one trial (and a multi-worker trial's Ray Train run), or say so."""
    check_satisfiable(
        {_RAY_RESOURCE.get(k, k): v for k, v in resources.items()}, 1, f"one trial (resources_per_trial={dict(resources)})",
        "Ask for less per trial (resources_per_trial, --gpus-per-trial), or add nodes.",
    )
    if workers_per_trial > 1:
        check_satisfiable(
            {"CPU": 1, "GPU": 1 if resources.get("gpu") else 0}, workers_per_trial,
            f"one trial's Ray Train run (workers_per_trial={workers_per_trial})", "Use fewer workers per trial, or add nodes.",
        )


def _validate(space, base, model_factory, config, val_data, num_samples, scheduler, workers_per_trial, max_concurrent) -> None:
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler={scheduler!r}: choose one of {list(SCHEDULERS)}")
    for label, value in (("num_samples", num_samples), ("workers_per_trial", workers_per_trial)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{label}={value!r} must be an integer >= 1")
    if max_concurrent is not None and (not isinstance(max_concurrent, int) or max_concurrent < 1):
        raise ValueError(f"max_concurrent={max_concurrent!r} must be an integer >= 1, or None")
    fsdp = base.parallelism == "fsdp" or any(p.name == "parallelism" and "fsdp" in p.sample_values() for p in space.params)
    if fsdp and workers_per_trial == 1:
        raise ValueError("parallelism='fsdp' (in training_config or the search space) shards each trial's model across workers: "
                         "set workers_per_trial >= 2 (each trial a Ray Train run), or search and train with parallelism='ddp'")
    if space.metric.startswith("val/") and val_data is None:
        raise ValueError(f"the sweep optimises {space.metric!r} but val_data is None: pass val_data, or use metric: train/loss")
    space.check_model_keys(model_config_dict(config))
    if any(p.is_model for p in space.params) and not _takes_config(model_factory):
        raise ValueError(
            "the space searches model.* parameters, but model_factory takes no argument, so they would be "
            "ignored: write it as `lambda model_config: MyModel(model_config)`"
        )
    for p in space.params:  # every edge value must also fit the base config's cross-field rules
        if not p.is_model:
            for value in p.sample_values():
                try:
                    base.replace(**{p.name: value})
                except (ValueError, TypeError) as e:
                    raise ValueError(f"{space.source}: parameter {p.name!r} = {value!r} does not fit the base training_config: {e}") from None


def _check_trial_resources(resources: Mapping[str, float] | None) -> None:
    """What one trial asks of Ray: amounts >= 0 of CPUs, GPUs and custom resources."""
    for key, amount in (resources or {}).items():
        if not isinstance(amount, (int, float)) or isinstance(amount, bool) or not amount >= 0:
            flag = " (--gpus-per-trial)" if key == "gpu" else ""
            raise ValueError(f"resources_per_trial {key}={amount!r}{flag} must be a number >= 0 (e.g. 0.5 shares a GPU between two trials)")


def _check_metric(space: SearchSpace, task_spec: Any, train_data: Any) -> None:
    """The metric must be a column the trials' task reports (known here when the task is
    given, or the data is in memory; a path is read by the trials)."""
    spec = as_task_spec(task_spec)
    answers = True  # whether the data marks answers (exact_match) is known only from a sample
    if spec is not None:
        task = spec.name
    elif isinstance(train_data, (str, os.PathLike)) or is_ray_data(train_data):
        return  # read by the trials (a path) or Ray Data: not known here
    else:
        sample = as_dataset(train_data, "train_data")[0]
        task, answers = detect_task(sample)[0], "labels" in sample
    columns = sorted({*MetricSums().metrics("train", task, answers), *MetricSums().metrics("val", task, answers), "train/learning_rate", *TELEMETRY_KEYS})
    if space.metric not in columns:
        close = difflib.get_close_matches(space.metric, columns, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"{space.source}: metric {space.metric!r} is not a column a {task} run reports; {hint}its columns are {columns}")


def _check_model_values(space: SearchSpace, model_factory: Callable, config: Any) -> None:
    """Build the model once for each edge or choice of every model.* parameter, the others at
    the base config: a value the model rejects fails here, before Ray starts, instead of in
    every trial that draws it. On the meta device first (no memory, no init cost); a
    factory that cannot build there (one that reads weights) is built for real."""
    import torch

    if not _takes_config(model_factory):
        return
    for p in space.params:
        if not p.is_model:
            continue
        for value in p.sample_values():
            model_config = _with_overrides(config, space.split({p.name: value})[1])
            try:
                with torch.device("meta"):
                    model_factory(model_config)
                continue
            except Exception:  # noqa: BLE001 - decided by the real build below
                pass
            try:
                model_factory(model_config)
            except Exception as e:  # noqa: BLE001 - whatever the model raises is the user's answer
                raise ValueError(f"{space.source}: parameter {p.name!r} = {value!r} is rejected by the model: {type(e).__name__}: {e}") from None


def _takes_config(factory: Callable) -> bool:
    try:
        params = [p for p in inspect.signature(factory).parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    except (TypeError, ValueError):
        return False
    return bool(params)


def _with_overrides(config: Any, overrides: Mapping[str, Any]) -> Any:
    if not overrides:
        return config
    if isinstance(config, Mapping):
        return {**config, **overrides}
    if config is None:
        return dict(overrides)
    out = copy.copy(config)
    for k, v in overrides.items():
        setattr(out, k, v)
    return out


def _trial(params: dict[str, Any], payload: _TrialInputs) -> None:
    """One Tune trial: the engine loop with the sampled parameters."""
    own_process_logs()
    quiet_exits()
    if not verbose():
        logging.getLogger("trainyard").setLevel(logging.WARNING)  # the driver's table speaks for trials
    training, model_overrides = payload.space.split({p.name: params[p.name] for p in payload.space.params})
    training_config = payload.base.replace(**training)
    model_config = _with_overrides(payload.config, model_overrides)
    factory = functools.partial(payload.model_factory, model_config) if _takes_config(payload.model_factory) else payload.model_factory
    if payload.workers_per_trial > 1:
        _nested_train_run(factory, model_config, training_config, payload)
        return
    staging = tempfile.mkdtemp(prefix="trainyard-trial-")
    try:
        trainer = TrainingLoop(factory, model_config, training_config, payload.task_spec)
        context = TuneTrialContext(checkpoint_every_epoch=payload.checkpoint_every_epoch, epochs=training_config.epochs, run_dir=f"{staging}/run")
        trainer.run(context, resolve(payload.train_data), resolve(payload.val_data))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _nested_train_run(factory, model_config, training_config, payload: _TrialInputs) -> None:
    """A multi-worker trial: a Ray Train run inside the trial, reporting to Tune."""
    scaling = scaling_config(payload.workers_per_trial, use_gpu=payload.use_gpu)
    run_config = trial_run_config(training_config)
    Trainer(factory, model_config, training_config, payload.task_spec, scaling=scaling, run_config=run_config).train(
        payload.train_data, payload.val_data
    )


def _searcher(space: SearchSpace, seed: int, max_concurrent: int):
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    sampler = optuna.samplers.TPESampler(seed=seed)
    return ConcurrencyLimiter(OptunaSearch(space=space.optuna_space(), metric=space.metric, mode=space.mode, sampler=sampler), max_concurrent=max_concurrent)


def _scheduler(kind: str, epochs: int, state_file: str):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule

    if kind == "asha":
        write_text(state_file, "")  # a new sweep's: nothing seen yet
        return _resumable_asha(ASHAScheduler, state_file)(time_attr="training_iteration", max_t=epochs, grace_period=1, reduction_factor=2)
    if kind == "median":  # a restored sweep's rule starts without the finished trials' curves
        return MedianStoppingRule(time_attr="training_iteration", grace_period=1, min_samples_required=2)
    return FIFOScheduler()


def _resumable_asha(base: type, state_file: str) -> type:
    """ASHA that a restored sweep continues as if never stopped. Tune restores the scheduler
    as it was when the sweep began, so a sweep killed and resumed judged its next trials
    against empty rungs and pruned other trials than an uninterrupted one. This one keeps its
    rungs, and every decision it took, in `state_file` beside Tune's own state: a trial that
    reports an epoch again after the restore gets the decision it got the first time.

    A trial whose results reached this file but not Tune's own state (Tune saves its state
    every few seconds; a kill in between) is unknown to the restored sweep, which starts it
    again under another id with the same suggestion. Its old entries are dropped on load: kept,
    they would count that trial twice in its rungs and prune differently than an uninterrupted
    sweep. (Defined here so that importing this module does not import Ray.)"""

    class ResumableASHA(base):
        def on_trial_result(self, tune_controller, trial, result):
            self._load(tune_controller)
            key = f"{trial.trial_id}:{result.get(self._time_attr)}"
            if key not in self._decisions:
                self._decisions[key] = super().on_trial_result(tune_controller, trial, result)
                self._save()
            return self._decisions[key]

        def on_trial_complete(self, tune_controller, trial, result):
            self._load(tune_controller)
            super().on_trial_complete(tune_controller, trial, result)
            self._save()

        def _load(self, tune_controller) -> None:
            if getattr(self, "_decisions", None) is not None:
                return
            text = read_text(state_file)
            state = json.loads(text) if text else {"rungs": [], "decisions": {}}
            known = {t.trial_id for t in tune_controller.get_trials()}
            for bracket, rungs in zip(self._brackets, state["rungs"]):
                for (_, recorded), saved in zip(bracket._rungs, rungs):
                    recorded.update({trial_id: value for trial_id, value in saved.items() if trial_id in known})
            self._decisions = {key: d for key, d in state["decisions"].items() if key.rsplit(":", 1)[0] in known}

        def _save(self) -> None:
            rungs = [[recorded for _, recorded in bracket._rungs] for bracket in self._brackets]
            write_text(state_file, json.dumps({"rungs": rungs, "decisions": self._decisions}))

    return ResumableASHA


def _default_concurrency(resources: Mapping[str, float], workers_per_trial: int) -> int:
    """As many trials as the cluster's CPUs hold (a nested Train run's workers count too)."""
    cpus = cluster_resources().get("CPU", 1)
    per_trial = (resources.get("cpu", 1) or 1) + (workers_per_trial if workers_per_trial > 1 else 0)
    return max(1, int(cpus // per_trial))


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


# -- results ---------------------------------------------------------------------------


def _collect(grid, space: SearchSpace, base: TrainingConfig, sweep_dir: str) -> SweepResult:
    import optuna
    import pandas as pd

    names = [p.name for p in space.params]
    distributions = space.optuna_space()
    study = optuna.create_study(direction="minimize" if space.mode == "min" else "maximize", study_name=Path(sweep_dir).name)
    rows, candidates = [], []
    for result in grid:
        metrics = dict(result.metrics or {})
        params = {k: result.config[k] for k in names}
        value = metrics.get(space.metric)
        epochs = int(metrics.get("training_iteration", 0) or 0)
        history = _history(result, space.metric)
        if result.error is not None or value is None or not math.isfinite(value):
            state = optuna.trial.TrialState.FAIL
        elif epochs < base.epochs:
            state = optuna.trial.TrialState.PRUNED  # stopped early by the scheduler
        else:
            state = optuna.trial.TrialState.COMPLETE
        complete = state == optuna.trial.TrialState.COMPLETE
        study.add_trial(
            optuna.trial.create_trial(
                params=params, distributions=distributions, value=value if complete else None,
                state=state, intermediate_values=history,
            )
        )
        trial = metrics.get("trial_id") or Path(result.path).name
        row = {"number": trial_number(metrics.get("experiment_tag"), len(rows) + 1), "trial": trial, "state": state.name, **params, "epochs": epochs}
        row.update({k: v for k, v in metrics.items() if "/" in k or k == "time_total_s"})
        if result.error is not None:
            row["error"] = str(result.error).strip().splitlines()[-1][:200]
        rows.append(row)
        if state != optuna.trial.TrialState.FAIL:
            candidates.append((value, result, params, row))
    frame = pd.DataFrame(rows)
    if not candidates:
        raise RuntimeError(f"every trial of the sweep failed; see the 'error' column: {frame.get('error', pd.Series()).tolist()}")
    pick = min if space.mode == "min" else max
    value, best, params, best_row = pick(candidates, key=lambda c: c[0])
    training, _model = space.split(params)
    checkpoint = best.checkpoint.path if best.checkpoint is not None else None
    best_metrics = {k: v for k, v in (best.metrics or {}).items() if "/" in k or k in ("training_iteration",)}
    # What the study alone needs to give the best config back (extract_best_config_from_study).
    for key, attr in {
        "sweep_path": sweep_dir, "metric": space.metric, "mode": space.mode, "best_trial": best_row["trial"],
        "best_checkpoint": checkpoint, "base_training_config": base.to_dict(),
    }.items():
        study.set_user_attr(f"trainyard.{key}", attr)
    return SweepResult(
        best_config=base.replace(**training),
        best_params=params,
        best_metrics=best_metrics,
        best_checkpoint=checkpoint,
        dataframe=frame,
        study=study,
        path=sweep_dir,
        metric=space.metric,
        mode=space.mode,
        best_trial=best_row["trial"],
    )


def _history(result, metric: str) -> dict[int, float]:
    frame = getattr(result, "metrics_dataframe", None)
    if frame is None or metric not in getattr(frame, "columns", ()):
        return {}
    out = {}
    for step, value in zip(frame["training_iteration"], frame[metric]):
        if value is not None and math.isfinite(value):
            out[int(step)] = float(value)
    return out


def _live_table(space: SearchSpace, epochs: int, log_epochs: bool = True):
    """A Tune callback printing one compact line per trial event instead of Tune's wall
    (defined here so that importing this module does not import Ray)."""
    from ray.tune import Callback

    class Table(Callback):
        def __init__(self):
            self.space = space
            self.numbers: dict[str, int] = {}

        def _label(self, trial) -> str:
            number = self.numbers.setdefault(trial.trial_id, trial_number(trial.experiment_tag, len(self.numbers) + 1))
            shown = " ".join(f"{p.name}={_fmt(trial.config.get(p.name))}" for p in self.space.params)
            return f"trial {number:>3} | {shown}"

        def on_trial_result(self, iteration, trials, trial, result, **info):
            value = result.get(self.space.metric)
            (log.info if log_epochs else log.debug)("%s | epoch %s %s %s", self._label(trial), result.get("training_iteration"), self.space.metric, _fmt(value))

        def on_trial_complete(self, iteration, trials, trial, **info):
            last = trial.last_result or {}
            ran = int(last.get("training_iteration") or 0)
            value = "" if log_epochs else f" ({self.space.metric} {_fmt(last.get(self.space.metric))})"
            if ran < epochs:  # the scheduler stopped it
                log.info("%s | pruned after epoch %d of %d%s", self._label(trial), ran, epochs, value)
            else:
                log.info("%s | done%s", self._label(trial), value)

        def on_trial_error(self, iteration, trials, trial, **info):
            log.info("%s | FAILED (the sweep goes on)", self._label(trial))

        def summary(self, result: SweepResult) -> None:
            counts = result.dataframe["state"].value_counts().to_dict()
            states = ", ".join(f"{n} {state.lower()}" for state, n in counts.items())
            params = " ".join(f"{k}={_fmt(v)}" for k, v in result.best_params.items())
            log.info("sweep done: %s; best %s %s with %s", states, result.metric, _fmt(result.best_metrics.get(result.metric)), params)

    return Table()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
