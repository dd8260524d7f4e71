"""The one way a Ray Train run starts: `fit(trainer, train_data, val_data, resume_from)`.

`trainyard.Trainer(..., scaling=N).train(...)` lands here, and with it every multi-worker
run of the platform (a sweep's `workers_per_trial > 1` trials, final training, job-queue
jobs). Driver side: connect to Ray, put the data into the object store (`ingest.py`: Ray Data
blocks, or one shared copy of in-memory data), resolve every user path (workers chdir
into their run folder), check that what travels to the workers pickles, build a `TorchTrainer` whose
per-worker function runs the engine loop with a `RayTrainContext`, and return rank 0's
results dict with the checkpoint path Ray persisted. Resumption is Ray's: after a worker
failure (`FailureConfig(max_failures)`) or a rerun with the same `RunConfig(name,
storage_path)`, `ray.train.get_checkpoint()` hands the loop its latest checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from trainyard._logging import get_logger, own_process_logs, quiet_exits
from trainyard.engine import checkpoint as ckpt
from trainyard.engine import run_folder
from trainyard.engine.loop import TrainingLoop
from trainyard.engine.shards import full_model_state
from trainyard.engine.trainable import load_model_state
from trainyard.execution.configs import elastic_global_batch, run_config, scaling_config
from trainyard.execution.contexts import RayTrainContext
from trainyard.execution.ingest import resolve, run_inputs
from trainyard.execution.ray_env import check_importable, check_satisfiable, ensure_ray, verbose
from trainyard.execution.remote import absolute, check_picklable
from trainyard.export.run import export_trained
from trainyard.storage import is_local, join, staged, uri

log = get_logger("trainyard.execution")


@dataclasses.dataclass
class _Payload:
    """Everything a worker needs to rebuild the training loop."""

    model: Any
    config: Any
    training_config: Any
    task_spec: Any
    hooks: list
    train_data: Any
    val_data: Any
    resume_from: Any
    tokenizer: Any = None


def check_before_ray(resume_from: Any) -> None:
    """A missing or corrupt local checkpoint to resume from is known before Ray and the
    workers start: say it once, there."""
    if isinstance(resume_from, (str, os.PathLike)) and not ckpt.is_ray_checkpoint(resume_from) and is_local(resume_from):
        ckpt.verify(run_folder.resolve(resume_from, warn=log.warning))


def fit(trainer: Any, train_data: Any, val_data: Any = None, resume_from: Any = None) -> dict[str, Any]:
    """Run `trainer` (a `trainyard.Trainer` with `scaling`) on Ray Train; leaves the trained
    weights in `trainer.model` and returns rank 0's results dict."""
    from ray.train.torch import TorchTrainer

    check_before_ray(resume_from)
    ensure_ray()
    scaling = scaling_config(trainer.scaling)
    training_config = elastic_global_batch(scaling, trainer.training_config)
    storage = trainer.run_config.storage_path if trainer.run_config is not None else None
    train_data, val_data = run_inputs(train_data, val_data, trainer.config, trainer.task_spec, on_ray=True, storage=storage)
    payload = _Payload(
        model=trainer.model_or_factory,
        config=trainer.config,
        training_config=training_config,
        task_spec=trainer.task_spec,
        hooks=list(trainer.hooks.hooks),
        train_data=train_data,
        val_data=val_data,
        resume_from=absolute(resume_from),
        tokenizer=trainer.tokenizer,
    )
    pickled = {name: check_picklable(name, getattr(payload, name)) for name in ("hooks", "model", "config", "train_data", "val_data")}
    check_importable("the model, its config and the hooks", pickled["model"], pickled["config"], pickled["hooks"])
    run = run_config(trainer.run_config, training_config)  # it makes the run's folder: after every check of the inputs
    folder = Path(run.storage_path, run.name)
    if resume_from is None and is_local(run.storage_path) and run_folder.latest_valid(folder) is not None:
        # A named run's folder can hold finished checkpoints that Ray's record of the run
        # lacks (its driver was stopped between the upload and the record): resuming from
        # Ray's alone started over and wrote over them. Ray's is still taken when newer.
        payload.resume_from = str(folder)
    check_satisfiable(
        {key: total / scaling.max_workers for key, total in scaling.total_resources.items()}, scaling.min_workers,  # elastic: its least
        f"training on {scaling.min_workers} Ray Train worker(s){' with a GPU each' if scaling.use_gpu else ''}",
        "Use fewer workers (scaling=N, --workers N), drop the GPUs (use_gpu=False, no --gpu), or add nodes.",
    )
    torch_trainer = TorchTrainer(_train_worker, train_loop_config={"payload": payload}, scaling_config=scaling, run_config=run)
    workers = f"{scaling.min_workers} to {scaling.max_workers} (elastic)" if scaling.elasticity_enabled else scaling.num_workers
    log.info("training on %s Ray Train worker(s); run %s in %s", workers, run.name, run.storage_path)
    if training_config.checkpoint_dir is not None:
        log.info("checkpoint_dir=%s is where runs in this process write; this run's checkpoints are kept in %s/%s",
                 training_config.checkpoint_dir, run.storage_path, run.name)
    start = time.perf_counter()
    with _ctrl_c_stops_like_sigterm():
        result = torch_trainer.fit()
    results = dict(result.return_value)
    results["wall_time"] = time.perf_counter() - start
    results["run_dir"] = uri(result.filesystem, result.path)  # a URI where the storage is one
    if result.checkpoint is not None:
        results["checkpoint_path"] = uri(result.checkpoint.filesystem, result.checkpoint.path)
        trainer.model = _final_model(trainer.model_or_factory, result.checkpoint)
        if training_config.export_bundle:  # the bundle, here, from the final weights; then beside the checkpoints
            with staged(join(results["run_dir"], "export")) as out:
                export_trained(trainer, resolve(payload.train_data), out, results["task"])
            results["export_path"] = join(results["run_dir"], "export")
    return results


@contextlib.contextmanager
def _ctrl_c_stops_like_sigterm():
    """Ray Train's fit() puts in its own Ctrl-C handler: it aborts the run, then exits the
    process (SystemExit inside whatever this process was doing; the trainyard command printed
    nothing and exited 1). Here that exit is the KeyboardInterrupt it stands for, so a caller
    (the command: 'interrupted ... resume with') handles it as any Ctrl-C; and the process's
    own handler comes back after the run (Ray's stayed, bound to a finished run)."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    try:
        yield
    except SystemExit as e:
        raise KeyboardInterrupt("Ctrl-C: the Ray Train run was aborted") from e
    finally:
        if main and previous is not None:
            signal.signal(signal.SIGINT, previous)


def _train_worker(config: dict[str, Any]) -> dict[str, Any] | None:
    """Runs in every Ray Train worker: the engine loop, with the Ray run context."""
    p: _Payload = config["payload"]
    own_process_logs()
    quiet_exits()
    if not verbose():
        _quiet_worker_logs()
    # This rank writes its checkpoints here; Ray copies each into the run's storage and the
    # local copy goes (the folder too, when the worker is done).
    _remove_abandoned_staging()
    staging = tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-")
    trainer = TrainingLoop(p.model, p.config, p.training_config, p.task_spec, hooks=p.hooks)
    trainer.tokenizer = p.tokenizer
    ctx = RayTrainContext(delete_local_checkpoints=True, training_config=p.training_config, run_dir=staging)
    try:
        results = trainer.run(ctx, resolve(p.train_data), resolve(p.val_data), resume_from=p.resume_from)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return results if ctx.is_main else None


STAGING_PREFIX = "trainyard-ckpt-"  # + the worker's pid + "-"


def _remove_abandoned_staging() -> None:
    """Staging folders of workers that are gone: one killed by Ray (a restart, a resize, a
    preemption's deadline) never removed its own, with the checkpoint it resumed from in it."""
    for folder in Path(tempfile.gettempdir()).glob(f"{STAGING_PREFIX}*-*"):
        pid = folder.name[len(STAGING_PREFIX):].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:  # another user's process: alive
            pass


def _quiet_worker_logs() -> None:
    """Ray Train workers log every report at INFO through a logger named after a file
    path (so `LoggingConfig(log_level)` misses it); turn it down."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    try:
        from ray.train.v2._internal.execution import context

        logging.getLogger(context.__file__).setLevel(logging.WARNING)
    except ImportError:  # a private module: if it moved, the line is merely noisy
        pass


def _final_model(model_or_factory: Any, checkpoint: Any):
    """The trained weights on the driver, as an in-process run leaves them in `trainer.model`
    (gathered whole from the shards of an FSDP run)."""
    from torch import nn

    model = model_or_factory if isinstance(model_or_factory, nn.Module) else model_or_factory()
    with checkpoint.as_directory() as d:
        loaded = ckpt.load(d)
        if loaded.sharded:
            model.load_state_dict(full_model_state(Path(d), model))
        else:
            load_model_state(model, loaded)
    return model
