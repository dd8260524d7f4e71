"""The run contexts of Ray's processes, and `create_run_context()` for any of the three.

    RayTrainContext   a Ray Train worker: DDP, all-reduce, ray.train.report / get_checkpoint
    TuneTrialContext  a Ray Tune trial (one process): reports and checkpoints go to Tune
    LocalContext      this process (trainyard.engine.context)

    ctx = create_run_context()            # local, a Ray Train worker, or a Ray Tune trial
    Trainer(model, config, training_config).run(ctx, train_data, val_data)

This is how a hand-written training function (a Ray Train `train_loop_per_worker`, a Tune
trainable) runs the engine loop in its environment: the loop itself never asks which.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainyard._logging import get_logger
from trainyard.engine import checkpoint as ckpt
from trainyard.engine import run_folder
from trainyard.engine.checkpoint import local_path
from trainyard.engine.config import TrainingConfig
from trainyard.engine.context import LocalContext, RunContext
from trainyard.execution import preemption
from trainyard.execution.parallel import ProcessGroupContext
from trainyard.storage import uri

log = get_logger("trainyard.execution")
KINDS = ("auto", "local", "ray_train", "tune")


class RayTrainContext(ProcessGroupContext):
    """A Ray Train worker: the rank, device and process group are Ray's; DDP through
    `ray.train.torch.prepare_model`, FSDP as any process group's (`parallelism`). Every rank
    reports each checkpoint (sharded: its own part; Ray Train merges them into one)."""

    def __init__(self, delete_local_checkpoints: bool, training_config: TrainingConfig | None = None, run_dir: str | Path | None = None):
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.device = ray.train.torch.get_device()
        self._delete_local = delete_local_checkpoints
        self.run_dir = Path(run_dir) if run_dir is not None else None  # where this rank stages its checkpoints
        self.run_name = context.get_experiment_name()  # the RunConfig's name: the run's folder in its storage
        self.use(training_config)
        preemption.watch(self.rank)  # SIGTERM: a checkpoint at the next step, then Ray's restart

    def prepare_model(self, model: nn.Module) -> nn.Module:
        if self.shards_state:
            return super().prepare_model(model)
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def report(self, metrics: dict[str, Any], checkpoint: Path | None) -> None:
        import ray.train

        # A barrier: every rank calls it, with the checkpoint it wrote (rank 0 alone, unless sharded:
        # then every rank, each with its part, merged by Ray Train under the same directory name).
        ray.train.report(
            _plain(metrics),
            checkpoint=ray.train.Checkpoint.from_directory(str(checkpoint)) if checkpoint is not None else None,
            checkpoint_dir_name=checkpoint.name if checkpoint is not None else None,
            delete_local_checkpoint_after_upload=self._delete_local,
        )

    def stop_signal(self) -> str | None:
        return preemption.stop_signal()

    def stopped_for_signal(self) -> None:
        preemption.leave_for_ray()

    def checkpoint_to_resume(self) -> Path | None:
        """Ray Train's latest checkpoint; or, in the run's folder beside it, a newer one that
        verifies: a run stopped by Ctrl-C or SIGTERM can have finished checkpoints that its
        controller had not registered yet (they are whole: the marker is written last), and
        resuming from Ray's redid those epochs."""
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        if type(checkpoint.filesystem).__name__ == "LocalFileSystem":
            path = Path(checkpoint.path)
            return run_folder.latest_valid(path.parent) or path
        # In object storage: the newest whole checkpoint of the run's folder (Ray's, or a newer
        # one it had not recorded when its worker was lost), copied into this rank's staging
        # folder (removed with it) and named as the checkpoint; messages name its own place.
        fs, folder = checkpoint.filesystem, checkpoint.path.rsplit("/", 1)[0]
        newer = _newest_complete(fs, folder, newer_than=checkpoint.path)
        for path in [newer, checkpoint.path] if newer else [checkpoint.path]:
            target = (self.run_dir or Path(tempfile.mkdtemp(prefix="trainyard-resume-"))) / "resume" / path.rsplit("/", 1)[-1]
            ray.train.Checkpoint(path, fs).to_directory(str(target))
            try:
                ckpt.verify(target)
            except ckpt.CheckpointError as e:
                if path == checkpoint.path:
                    raise
                log.warning("skipping %s: %s; resuming from Ray's latest checkpoint", uri(fs, path), e)
                continue
            self._downloaded = (target, uri(fs, path))
            return target
        return None  # not reached: Ray's own checkpoint verified or raised

    def describe(self, path: Path) -> str:
        downloaded = getattr(self, "_downloaded", None)
        return downloaded[1] if downloaded is not None and Path(path) == downloaded[0] else super().describe(path)


def _newest_complete(fs: Any, folder: str, newer_than: str) -> str | None:
    """The checkpoint in `folder` (on pyarrow filesystem `fs`) saved last, if it has its
    completion marker and was saved after `newer_than`; else None. A run's worker can be
    lost after uploading a checkpoint and before Ray recorded it."""
    import pyarrow.fs

    def saved_at(path: str) -> int:
        try:
            with fs.open_input_stream(f"{path}/{ckpt.MARKER}") as stream:
                return int(json.loads(stream.read())["saved_at_ns"])
        except (OSError, ValueError, KeyError, TypeError):
            return -1

    found = [i.path for i in fs.get_file_info(pyarrow.fs.FileSelector(folder)) if i.type == pyarrow.fs.FileType.Directory
             and i.path.rsplit("/", 1)[-1].startswith("checkpoint_")]
    stamped = sorted((saved_at(p), p) for p in found)
    if not stamped or stamped[-1][0] < 0 or stamped[-1][0] <= saved_at(newer_than):
        return None
    return stamped[-1][1]


class TuneTrialContext(RunContext):
    """`checkpoint_every_epoch=False` hands Tune only the final epoch's checkpoint (of
    `epochs`): metrics still go to Tune every epoch. `run_dir`: where the trial writes its
    checkpoints before Tune persists them."""

    def __init__(self, checkpoint_every_epoch: bool = True, epochs: int | None = None, run_dir: str | Path | None = None):
        import ray
        import ray.tune

        gpus = ray.get_gpu_ids() if ray.is_initialized() else []
        self.device = torch.device("cuda" if gpus and torch.cuda.is_available() else "cpu")
        self._every_epoch, self._epochs = checkpoint_every_epoch, epochs
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.run_name = ray.tune.get_context().get_trial_name()  # the trial's folder in the sweep's

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    def report(self, metrics: dict[str, Any], checkpoint: Path | None) -> None:
        import ray.tune

        plain = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))}
        if not self._every_epoch and metrics.get("epoch") != self._epochs:
            checkpoint = None
        ray.tune.report(plain, checkpoint=ray.tune.Checkpoint.from_directory(str(checkpoint)) if checkpoint else None)

    def checkpoint_to_resume(self) -> Path | None:
        import ray.tune

        checkpoint = ray.tune.get_checkpoint()
        return local_path(checkpoint) if checkpoint is not None else None


def _plain(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if v is None or isinstance(v, (int, float, str, bool))}


def create_run_context(
    kind: str = "auto", *, device: str | None = None, delete_local_checkpoints: bool = True, training_config: TrainingConfig | None = None
) -> RunContext:
    """A `RunContext`. `kind="auto"` detects the environment; `device` applies to local
    runs; in Ray Train, `delete_local_checkpoints` removes a checkpoint's local copy once
    Ray has persisted it, and `training_config` picks DDP or FSDP (`parallelism`)."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} must be one of {list(KINDS)}")
    if kind == "auto":
        kind = detect_environment()
    if kind == "ray_train":
        return RayTrainContext(delete_local_checkpoints=delete_local_checkpoints, training_config=training_config)
    if kind == "tune":
        return TuneTrialContext()
    return LocalContext(device)


def detect_environment() -> str:
    """'ray_train' in a Ray Train worker, 'tune' in a Ray Tune trial, else 'local'."""
    if "ray" not in sys.modules:  # nothing of Ray is loaded: not inside Ray (and stays fast)
        return "local"
    try:
        from ray.tune.trainable.trainable_fn_utils import _in_tune_session  # noqa: PLC2701 - no public equivalent

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
