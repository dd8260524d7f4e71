"""`create_run_context()`: the run context for wherever this code is running.

    ctx = create_run_context()            # local, a Ray Train worker, or a Ray Tune trial
    Trainer(model, config, training_config).run(ctx, train_data, val_data)

This is how a hand-written training function (a Ray Train `train_loop_per_worker`, a Tune
trainable) runs the engine loop in its environment: the loop itself never asks which.
"""

from __future__ import annotations

import sys

KINDS = ("auto", "local", "ray_train", "tune")


def create_run_context(kind: str = "auto", *, device: str | None = None, delete_local_checkpoints: bool = True):
    """A `RunContext`. `kind="auto"` detects the environment; `device` applies to local
    runs; in Ray Train, `delete_local_checkpoints` removes a checkpoint's local copy once
    Ray has persisted it."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} must be one of {list(KINDS)}")
    if kind == "auto":
        kind = detect_environment()
    if kind == "ray_train":
        from trainyard.execution.ray_context import RayTrainContext

        return RayTrainContext(delete_local_checkpoints=delete_local_checkpoints)
    if kind == "tune":
        from trainyard.hpo.tune_context import TuneTrialContext

        return TuneTrialContext()
    from trainyard.engine.context import LocalContext

    return LocalContext(device)


def detect_environment() -> str:
    """'ray_train' in a Ray Train worker, 'tune' in a Ray Tune trial, else 'local'."""
    if "ray" not in sys.modules:  # nothing of Ray is loaded: not inside Ray (and stays fast)
        return "local"
    try:
        from ray.tune.trainable.trainable_fn_utils import _in_tune_session

        if _in_tune_session():
            return "tune"
    except ImportError:  # a private helper: without it, Tune trials are not detected
        pass
    import ray.train

    try:
        ray.train.get_context()
    except (RuntimeError, DeprecationWarning):
        return "local"
    return "ray_train"
