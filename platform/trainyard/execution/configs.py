"""Ray Train's config objects, built in one place for every caller.

    scaling_config(2)                                   # or a ScalingConfig, as given
    run_config(None, training_config, name="exp1")      # storage, naming, retention, logging
    trial_run_config(training_config)                   # a Ray Train run inside a Tune trial
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from trainyard._trust import make_private_dir
from trainyard.engine.batching import indivisible
from trainyard.engine.config import TrainingConfig
from trainyard.execution.ray_env import cluster_resources, verbose
from trainyard.execution.remote import run_name
from trainyard.storage import absolute, default_storage, folder_name, is_local

_RAY_DEFAULT_NAME = re.compile(r"^ray_train_run-\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}$")


def scaling_config(scaling: Any, use_gpu: bool | None = None):
    """`scaling=N`, or `(min, max)` for an elastic run (as many workers as the cluster holds,
    from min to max; GPUs when the cluster has enough for them, unless `use_gpu` says), or a
    `ray.train.ScalingConfig`, returned as it is."""
    import ray.train

    if isinstance(scaling, (int, tuple)):
        if use_gpu is None:
            use_gpu = cluster_resources().get("GPU", 0) >= (scaling if isinstance(scaling, int) else scaling[0])
        return ray.train.ScalingConfig(num_workers=scaling, use_gpu=use_gpu)
    return scaling


def elastic_global_batch(scaling: Any, training_config: TrainingConfig) -> TrainingConfig:
    """An elastic run's global batch, fixed before it starts: `global_batch_size`, or
    `batch_size x accumulation x max workers` (each worker's share at full strength). Every
    worker count the run may have must split it evenly; said here, before anything starts."""
    if not scaling.elasticity_enabled:
        return training_config
    low, high = scaling.min_workers, scaling.max_workers
    total = training_config.global_batch_size or training_config.batch_size * training_config.gradient_accumulation_steps * high
    if any(total % n for n in range(low, high + 1)):
        raise ValueError(f"{indivisible(total, list(range(low, high + 1)))} (an elastic run of {low} to {high} workers may run on any of them)")
    return training_config.replace(global_batch_size=total, gradient_accumulation_steps=1)


def run_config(given: Any, training_config: TrainingConfig, *, name: str | None = None, storage_path: str | None = None, callbacks: list | None = None):
    """The user's RunConfig (`given`) or a new one (`name`, `storage_path`, checkpoints kept
    as `keep_last_n_checkpoints`), with a unique name unless one was chosen, an absolute
    local storage path, and Ray Train's own logs at WARNING unless verbose."""
    if name is not None:
        folder_name(name)  # before Ray's import: it names the run's folder under storage_path
    import ray.train
    from ray.train.v2.api.config import LoggingConfig

    if given is None:
        given = ray.train.RunConfig(
            name=name,
            storage_path=storage_path or default_storage(),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=training_config.keep_last_n_checkpoints),
            callbacks=callbacks,
        )
    changes: dict[str, Any] = {}
    if given.name is not None:
        folder_name(given.name)  # it names the run's folder under storage_path
    if given.name is None or _RAY_DEFAULT_NAME.match(given.name):
        # Ray silently resumes a run whose (name, storage_path) exists, even a finished one,
        # and its default name has one-second resolution: a fresh name unless the user
        # chose one (and so chose to resume).
        changes["name"] = run_name("trainyard")
    if is_local(given.storage_path):
        changes["storage_path"] = absolute(given.storage_path)
        make_private_dir(Path(changes["storage_path"]) / changes.get("name", given.name))  # owner-only run folder
    if not verbose():
        changes["logging_config"] = LoggingConfig(log_level="WARNING")
    return dataclasses.replace(given, **changes)


def trial_run_config(training_config: TrainingConfig):
    """A Ray Train run inside the current Tune trial (the Train V2 way): named after the
    trial, so a restarted trial's run resumes its own checkpoints; stored in the trial's
    directory; every report forwarded to Tune."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    context = ray.tune.get_context()
    return run_config(
        None, training_config, name=f"train-{context.get_trial_id()}", storage_path=f"{context.get_trial_dir()}/train",
        callbacks=[TuneReportCallback()],
    )
