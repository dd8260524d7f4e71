"""`Trainer(..., scaling=N).train(...)`: the engine loop in N Ray Train workers.

Driver: connect to Ray, resolve every user path (workers chdir into their run folder),
check that what travels to the workers pickles, build a `TorchTrainer` whose per-worker
function runs `Trainer.run` with a `RayTrainContext`, and return rank 0's results dict
with the checkpoint path Ray persisted. Resumption is Ray's: after a worker failure
(`FailureConfig(max_failures)`) or a rerun with the same `RunConfig(name, storage_path)`,
`ray.train.get_checkpoint()` hands the loop its latest checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from trainyard._logging import get_logger
from trainyard.engine.checkpoint import is_ray_checkpoint
from trainyard.execution.ray_env import ensure_ray, verbose

log = get_logger("trainyard.execution")


@dataclasses.dataclass
class _Payload:
    """Everything a worker needs to rebuild the Trainer."""

    model: Any
    config: Any
    training_config: Any
    task_spec: Any
    hooks: list
    train_data: Any
    val_data: Any
    resume_from: Any


def fit(trainer: Any, train_data: Any, val_data: Any = None, resume_from: Any = None) -> dict[str, Any]:
    from ray.train.torch import TorchTrainer

    ensure_ray()
    payload = _Payload(
        model=trainer.model_or_factory,
        config=trainer.config,
        training_config=_absolute_checkpoint_dir(trainer.training_config),
        task_spec=trainer.task_spec,
        hooks=list(trainer.hooks.hooks),
        train_data=_absolute(train_data),
        val_data=_absolute(val_data),
        resume_from=_absolute(resume_from),
    )
    _check_picklable(payload)
    run_config = _run_config(trainer.run_config, trainer.training_config)
    scaling = _scaling_config(trainer.scaling)
    torch_trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"payload": payload},
        scaling_config=scaling,
        run_config=run_config,
    )
    log.info("training on %d Ray Train worker(s); run %s in %s", scaling.num_workers, run_config.name, run_config.storage_path)
    start = time.perf_counter()
    result = torch_trainer.fit()
    results = dict(result.return_value)
    results["wall_time"] = time.perf_counter() - start
    results["run_dir"] = result.path
    if result.checkpoint is not None:
        results["checkpoint_path"] = result.checkpoint.path
        _load_final_weights(trainer, result.checkpoint)
    return results


def _train_worker(config: dict[str, Any]) -> dict[str, Any] | None:
    """Runs in every Ray Train worker: the engine loop, with the Ray run context."""
    from trainyard.engine.trainer import Trainer
    from trainyard.execution.ray_context import RayTrainContext

    p: _Payload = config["payload"]
    if not verbose():
        _quiet_worker_logs()
    staging = p.training_config.checkpoint_dir
    temporary = staging is None
    if temporary:  # rank 0 writes here, Ray copies it to storage_path, then it goes
        staging = tempfile.mkdtemp(prefix="trainyard-ckpt-")
    training_config = p.training_config.replace(checkpoint_dir=os.path.join(staging, uuid.uuid4().hex[:8]))
    trainer = Trainer(p.model, p.config, training_config, p.task_spec, hooks=p.hooks)
    ctx = RayTrainContext(delete_local_checkpoints=temporary)
    try:
        results = trainer.run(ctx, p.train_data, p.val_data, resume_from=p.resume_from)
    finally:
        if temporary:
            shutil.rmtree(staging, ignore_errors=True)
    return results if ctx.is_main else None


def _scaling_config(scaling: Any):
    import ray
    import ray.train

    if isinstance(scaling, int):
        gpus = ray.cluster_resources().get("GPU", 0)
        return ray.train.ScalingConfig(num_workers=scaling, use_gpu=gpus >= scaling)
    return scaling


def _run_config(run_config: Any, training_config: Any):
    """The user's RunConfig (or a default one) with a unique name, an absolute local
    storage path, `keep_last_n_checkpoints` as Ray's `num_to_keep` unless given, and Ray
    Train's own logs at WARNING unless verbose."""
    import ray.train
    from ray.train.v2.api.config import LoggingConfig

    if run_config is None:
        run_config = ray.train.RunConfig(
            storage_path=str(Path("runs").resolve()),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=training_config.keep_last_n_checkpoints),
        )
    changes: dict[str, Any] = {}
    if run_config.name is None or _RAY_DEFAULT_NAME.match(run_config.name):
        # Ray silently resumes a run whose (name, storage_path) exists, even a finished one,
        # and its default name has one-second resolution: a fresh name unless the user
        # chose one (and so chose to resume).
        changes["name"] = f"trainyard-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    if "://" not in str(run_config.storage_path):
        changes["storage_path"] = str(Path(run_config.storage_path).expanduser().resolve())
    if not verbose():
        changes["logging_config"] = LoggingConfig(log_level="WARNING")
    return dataclasses.replace(run_config, **changes)


_RAY_DEFAULT_NAME = re.compile(r"^ray_train_run-\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}$")


def _quiet_worker_logs() -> None:
    """Ray Train workers log every report at INFO through a logger named after a file
    path (so `LoggingConfig(log_level)` misses it); turn it down."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    try:
        from ray.train.v2._internal.execution import context

        logging.getLogger(context.__file__).setLevel(logging.WARNING)
    except ImportError:  # a private module: if it moved, the line is merely noisy
        pass


def _absolute(value: Any) -> Any:
    if is_ray_checkpoint(value):
        return value
    if isinstance(value, (str, os.PathLike)) and "://" not in str(value):
        return str(Path(value).expanduser().resolve())
    return value


def _absolute_checkpoint_dir(training_config: Any) -> Any:
    if training_config.checkpoint_dir is None:
        return training_config
    return training_config.replace(checkpoint_dir=_absolute(training_config.checkpoint_dir))


def _check_picklable(payload: _Payload) -> None:
    parts = {"hooks": payload.hooks, "model": payload.model, "config": payload.config, "train_data": payload.train_data, "val_data": payload.val_data}
    for name, value in parts.items():
        _check_picklable_value(name, value)


def _check_picklable_value(name: str, value: Any) -> None:
    """Objects sent to Ray's processes must pickle; say which one does not, and why."""
    from ray import cloudpickle

    try:
        cloudpickle.dumps(value)
    except Exception as e:  # noqa: BLE001 - any pickling failure
        what = ", ".join(type(h).__name__ for h in value) if name == "hooks" else type(value).__name__
        raise TypeError(
            f"{name} ({what}) must be picklable to run inside Ray workers, and is not: "
            f"{type(e).__name__}: {e}. Define it at module level and keep no open files, "
            "locks or connections in it (open them in on_train_begin instead)"
        ) from e


def _load_final_weights(trainer: Any, checkpoint: Any) -> None:
    """Leave the trained weights in `trainer.model` on the driver, as an in-process run does."""
    import torch
    from torch import nn

    model = trainer.model_or_factory if isinstance(trainer.model_or_factory, nn.Module) else trainer.model_or_factory()
    with checkpoint.as_directory() as d:
        model.load_state_dict(torch.load(Path(d) / "model.pt", map_location="cpu", weights_only=True))
    trainer.model = model
