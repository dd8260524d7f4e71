"""`TrainingConfig`: every knob of the engine loop, validated when it is built.

A bad value raises `ValueError` naming the field, the value and what is allowed; an
unknown keyword raises `TypeError` naming the field meant (old names of the legacy API
included). The config is frozen: derive a changed copy with `config.replace(...)`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from trainyard import _yaml
from trainyard.engine.fields import EXPORT_FORMATS, VALIDATORS, check_optimizer_kwargs, is_int, plain_scalar

# Names of the legacy API (and common short forms) -> the field that replaced them.
RENAMED_FIELDS = {
    "n_epochs": ("epochs", "epochs=10"),
    "num_epochs": ("epochs", "epochs=10"),
    "gradient_clip_norm": ("max_grad_norm", "max_grad_norm=1.0"),
    "use_wandb": ("wandb_project", "wandb_project='my-project' (a project name; None disables W&B)"),
    "lr": ("learning_rate", "learning_rate=5e-5"),
    "wd": ("weight_decay", "weight_decay=0.01"),
    "warmup": ("warmup_steps", "warmup_steps=100"),
    "seed": ("random_seed", "random_seed=42"),
}

# Rows per shuffle chunk (engine.data.order): the default of shuffle_chunk_rows, and the size
# of the blocks in-memory data is put into Ray's object store in.
SHUFFLE_CHUNK_ROWS = 65536


@dataclass(frozen=True)
class TrainingConfig:
    """How to train. Every field has a default; `batch_size` is per worker."""

    learning_rate: float = 5e-5
    batch_size: int = 4
    epochs: int = 3
    weight_decay: float = 0.01
    max_grad_norm: float | None = 1.0
    use_amp: bool = False
    amp_dtype: str | None = None  # None: bf16 where supported, else fp16 + GradScaler
    gradient_accumulation_steps: int = 1
    # Samples per optimizer step over all workers. None: batch_size x accumulation x workers at
    # the run's start, kept by its checkpoints. It stays when the worker count changes (each
    # worker's share in micro-batches of at most batch_size, accumulated).
    global_batch_size: int | None = None
    random_seed: int = 42
    deterministic: bool = False
    optimizer: str = "adamw"  # any torch.optim optimizer by name, case-insensitive: adamw, adam, sgd, adafactor, ...
    optimizer_kwargs: dict[str, Any] | None = None  # its other arguments (betas, momentum, ...); lr and weight decay are fields
    use_lr_schedule: bool = True  # False: the learning rate stays constant, no warmup
    lr_schedule: str = "cosine"  # after linear warmup: cosine or linear decay to min_lr_ratio, or constant
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    compile_mode: str | None = None
    device: str | None = None  # None: cuda when available, else cpu
    num_workers: int = 0  # DataLoader worker processes
    # The epoch's order shuffles chunks of this many consecutive rows, then the rows in each
    # chunk: a reader of large data holds one chunk at a time. Data of at most this many
    # rows is shuffled whole (DistributedSampler's order).
    shuffle_chunk_rows: int = SHUFFLE_CHUNK_ROWS
    wandb_project: str | None = None
    mlflow_experiment: str | None = None  # MLflow; the tracking URI from MLFLOW_TRACKING_URI
    tensorboard_dir: str | None = None  # TensorBoard event files, one subdirectory per run
    peak_flops: float | None = None  # FLOP/s of one device, for MFU; None: from the device table
    parallelism: str = "ddp"  # on Ray Train: "ddp" replicates the model, "fsdp" shards it (FSDP2)
    fsdp_wrap: tuple[str, ...] | None = None  # block class names to shard (and checkpoint) apart; None: detect
    activation_checkpointing: bool = False  # recompute each block's activations in the backward pass
    export_bundle: bool = False
    export_formats: tuple[str, ...] = ("onnx", "torchscript", "pt2")
    export_tolerance: float = 1e-3  # max abs logit error of an exported graph against the model
    checkpoint_dir: str | None = None  # None: checkpoints/<run id> under the working dir
    checkpoint_every_n_steps: int | None = None  # None: at each epoch end only
    keep_last_n_checkpoints: int | None = 3  # None keeps all
    eval_every_n_steps: int | None = None  # validate every N optimizer steps too; None: at each epoch end only
    # Token accuracy and exact match of the training batches, measured on every Nth optimizer
    # step of an epoch (its first included): the other steps compute the loss alone. 1: every
    # step. Validation measures every batch.
    train_metrics_every_n_steps: int = 10
    early_stopping_metric: str | None = None  # e.g. "val/loss": stop when it stops improving; None: never
    early_stopping_patience: int = 3  # evaluations without improvement before stopping
    early_stopping_mode: str | None = None  # "min" or "max"; None: min for loss/perplexity, max for accuracy/exact_match
    early_stopping_min_delta: float = 0.0  # an improvement must exceed this

    def __post_init__(self) -> None:
        # Accept any sequence for export_formats and a PathLike for checkpoint_dir, but
        # store canonical, hashable, YAML-friendly types.
        for name in ("export_formats", "fsdp_wrap"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("checkpoint_dir", "tensorboard_dir"):
            if isinstance(getattr(self, name), os.PathLike):
                object.__setattr__(self, name, os.fspath(getattr(self, name)))
        if isinstance(self.optimizer, str):
            object.__setattr__(self, "optimizer", self.optimizer.lower())
        if isinstance(self.optimizer_kwargs, Mapping):  # a copy of its own, with YAML's lists for tuples (betas)
            object.__setattr__(self, "optimizer_kwargs", {k: list(v) if isinstance(v, tuple) else v for k, v in self.optimizer_kwargs.items()})
        for f in dataclasses.fields(self):  # NumPy scalars (np.int64(8), np.float64(1e-3), np.bool_) as plain values
            object.__setattr__(self, f.name, plain_scalar(getattr(self, f.name)))
        if is_int(self.learning_rate):
            object.__setattr__(self, "learning_rate", float(self.learning_rate))
        for f in dataclasses.fields(self):
            VALIDATORS[f.name](f.name, getattr(self, f.name))
        if self.global_batch_size is not None and self.gradient_accumulation_steps != 1:
            raise ValueError(
                f"gradient_accumulation_steps={self.gradient_accumulation_steps} with global_batch_size={self.global_batch_size}: "
                "the accumulation follows from the global batch (each worker's share in micro-batches of at most batch_size); drop one"
            )
        if self.warmup_steps and not self.use_lr_schedule:
            raise ValueError(
                f"warmup_steps={self.warmup_steps} has no effect with use_lr_schedule=False: "
                "set use_lr_schedule=True to warm up, or warmup_steps=0"
            )
        if self.fsdp_wrap is not None and self.parallelism != "fsdp" and not self.activation_checkpointing:
            raise ValueError(
                f"fsdp_wrap={list(self.fsdp_wrap)} has no effect with parallelism={self.parallelism!r}: set "
                "parallelism='fsdp' (it names the blocks to shard) or activation_checkpointing=True (the blocks to recompute)"
            )
        if self.parallelism == "fsdp" and self.use_amp and self.amp_dtype == "float16":
            raise ValueError(
                "use_amp with amp_dtype='float16' is not supported with parallelism='fsdp' (its loss scaler would need every "
                "rank to agree on overflow): use amp_dtype='bfloat16', or parallelism='ddp'"
            )
        if not self.use_lr_schedule and self.lr_schedule not in ("cosine", "constant"):
            raise ValueError(
                f"lr_schedule={self.lr_schedule!r} has no effect with use_lr_schedule=False (a constant rate): "
                "set use_lr_schedule=True, or leave lr_schedule out"
            )
        check_optimizer_kwargs(self.optimizer, self.optimizer_kwargs, self.learning_rate)
        if self.early_stopping_metric is None:
            unused = [f"{name}={getattr(self, name)!r}" for name in _EARLY_STOPPING_SETTINGS if getattr(self, name) != _DEFAULTS[name]]
            if unused:
                raise ValueError(
                    f"{', '.join(unused)} has no effect without early_stopping_metric: name the metric to watch "
                    "(e.g. early_stopping_metric='val/loss'), or leave these out"
                )
        if self.export_bundle and not self.export_formats:
            raise ValueError(
                "export_bundle=True with export_formats=() exports nothing: "
                f"choose some of {list(EXPORT_FORMATS)}"
            )

    # -- copies and serialisation -----------------------------------------------------

    def replace(self, **changes: Any) -> "TrainingConfig":
        """A validated copy with some fields changed."""
        _check_names(changes)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["export_formats"] = list(self.export_formats)
        d["fsdp_wrap"] = list(self.fsdp_wrap) if self.fsdp_wrap is not None else None
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainingConfig":
        if not isinstance(data, Mapping):
            raise TypeError(f"TrainingConfig.from_dict needs a mapping, got {type(data).__name__}")
        return cls(**dict(data))

    def to_yaml(self, path: str | os.PathLike | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml(cls, source: str | os.PathLike) -> "TrainingConfig":
        """Load from a YAML file path, or from YAML text."""
        data = (_yaml.load_file(source, "TrainingConfig YAML") if _looks_like_path(source) else _yaml.load(str(source), "TrainingConfig YAML")) or {}
        if not isinstance(data, Mapping):
            raise ValueError(f"TrainingConfig YAML must be a mapping of field: value, got {data!r}")
        return cls.from_dict(data)


FIELD_NAMES = tuple(f.name for f in dataclasses.fields(TrainingConfig))
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainingConfig)}
_EARLY_STOPPING_SETTINGS = ("early_stopping_patience", "early_stopping_mode", "early_stopping_min_delta")


def as_training_config(value: Any) -> TrainingConfig:
    """A TrainingConfig from a TrainingConfig, a dict of its fields, or None (defaults)."""
    if value is None:
        return TrainingConfig()
    if isinstance(value, TrainingConfig):
        return value
    if isinstance(value, Mapping):
        return TrainingConfig.from_dict(value)
    raise TypeError(f"training_config must be a TrainingConfig (or a dict of its fields), got {type(value).__name__}")


def _looks_like_path(source: Any) -> bool:
    if isinstance(source, os.PathLike):
        return True
    return "\n" not in source and source.endswith((".yaml", ".yml"))


def unknown_field_message(name: str, owner: str = "TrainingConfig") -> str:
    if name in RENAMED_FIELDS:
        new, example = RENAMED_FIELDS[name]
        return f"{owner} has no field {name!r}: it was renamed to {new!r}; use {example}"
    close = difflib.get_close_matches(name, FIELD_NAMES, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; fields are: {', '.join(FIELD_NAMES)}"
    return f"{owner} got an unexpected keyword argument {name!r}{hint}"


def _check_names(kwargs: Mapping[str, Any]) -> None:
    for name in kwargs:
        if name not in FIELD_NAMES:
            raise TypeError(unknown_field_message(name))


def _guard_unknown_keywords(init):
    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        _check_names(kwargs)
        init(self, *args, **kwargs)

    return __init__


TrainingConfig.__init__ = _guard_unknown_keywords(TrainingConfig.__init__)


assert set(VALIDATORS) == set(FIELD_NAMES), "every TrainingConfig field needs a validator"
