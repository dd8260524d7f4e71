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
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from trainyard import _yaml

COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune")
EXPORT_FORMATS = ("onnx", "torchscript", "pt2")
AMP_DTYPES = (None, "bfloat16", "float16")
PARALLELISMS = ("ddp", "fsdp")

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
    random_seed: int = 42
    deterministic: bool = False
    use_lr_schedule: bool = True  # linear warmup, then cosine decay to min_lr_ratio
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

    def __post_init__(self) -> None:
        # Accept any sequence for export_formats and a PathLike for checkpoint_dir, but
        # store canonical, hashable, YAML-friendly types.
        for name in ("export_formats", "fsdp_wrap"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("checkpoint_dir", "tensorboard_dir"):
            if isinstance(getattr(self, name), os.PathLike):
                object.__setattr__(self, name, os.fspath(getattr(self, name)))
        for f in dataclasses.fields(self):  # NumPy scalars (np.int64(8), np.float64(1e-3), np.bool_) as plain values
            object.__setattr__(self, f.name, _plain_scalar(getattr(self, f.name)))
        if _is_int(self.learning_rate):
            object.__setattr__(self, "learning_rate", float(self.learning_rate))
        for f in dataclasses.fields(self):
            _VALIDATORS[f.name](f.name, getattr(self, f.name))
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


# -- per-field validation ---------------------------------------------------------------


def _plain_scalar(v: Any) -> Any:
    """A NumPy scalar as the plain bool, int or float it holds (np.float64 subclasses float,
    np.bool_ is no bool): the config is saved as YAML and JSON, which take plain values only.
    Recognised by its module, so NumPy need not be imported here."""
    if type(v).__module__ != "numpy" or not hasattr(v, "item"):
        return v
    plain = v.item()
    return plain if isinstance(plain, (bool, int, float)) else v


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _bad(name: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"TrainingConfig.{name}={value!r} is invalid: {allowed}")


def _positive_number(name, v):
    if not _is_number(v) or not v > 0 or v != v or v == float("inf"):
        raise _bad(name, v, "must be a finite number > 0")


def _non_negative_number(name, v):
    if not _is_number(v) or not v >= 0 or v == float("inf"):
        raise _bad(name, v, "must be a finite number >= 0")


def _optional_positive_number(name, v):
    if v is not None:
        if not _is_number(v) or not v > 0 or v == float("inf"):
            raise _bad(name, v, "must be a finite number > 0, or None to disable")


def _ratio(name, v):
    if not _is_number(v) or not 0 <= v <= 1:
        raise _bad(name, v, "must be a number in [0, 1]")


def _positive_int(name, v):
    if not _is_int(v) or v < 1:
        raise _bad(name, v, "must be an integer >= 1")


def _non_negative_int(name, v):
    if not _is_int(v) or v < 0:
        raise _bad(name, v, "must be an integer >= 0")


def _optional_positive_int(name, v):
    if v is not None and (not _is_int(v) or v < 1):
        raise _bad(name, v, "must be an integer >= 1, or None")


def _boolean(name, v):
    if not isinstance(v, bool):
        raise _bad(name, v, "must be True or False")


def _one_of(choices):
    def check(name, v):
        if v not in choices:
            raise _bad(name, v, f"must be one of {list(choices)}")

    return check


def _optional_text(name, v):
    if v is not None and (not isinstance(v, str) or not v.strip()):
        raise _bad(name, v, "must be a non-empty string, or None")


def _optional_path(name, v):
    _optional_text(name, v)
    if v is not None and "\x00" in v:
        raise _bad(name, v, "must not contain a NUL byte (no filesystem accepts one)")


def _seed(name, v):
    if not _is_int(v) or not 0 <= v < 2**32:
        raise _bad(name, v, "must be an integer in [0, 2**32 - 1] (NumPy's generators take no larger seed)")


def _device(name, v):
    if v is None:
        return
    if not isinstance(v, str) or not re.fullmatch(r"(cpu|cuda|mps|xpu)(:\d+)?", v):
        raise _bad(name, v, "must be None (auto), 'cpu', 'cuda', 'cuda:N' or 'mps'")


def _class_names(name, v):
    if v is not None and (not isinstance(v, tuple) or not v or not all(isinstance(c, str) and c.isidentifier() for c in v)):
        raise _bad(name, list(v) if isinstance(v, tuple) else v, "must be a list of module class names (e.g. ['Block']), or None to detect the repeated blocks")


def _formats(name, v):
    if not isinstance(v, tuple) or any(f not in EXPORT_FORMATS for f in v):
        raise _bad(name, list(v) if isinstance(v, tuple) else v, f"must be a list drawn from {list(EXPORT_FORMATS)}")


_VALIDATORS = {
    "learning_rate": _positive_number,
    "batch_size": _positive_int,
    "epochs": _positive_int,
    "weight_decay": _non_negative_number,
    "max_grad_norm": _optional_positive_number,
    "use_amp": _boolean,
    "amp_dtype": _one_of(AMP_DTYPES),
    "gradient_accumulation_steps": _positive_int,
    "random_seed": _seed,
    "deterministic": _boolean,
    "use_lr_schedule": _boolean,
    "warmup_steps": _non_negative_int,
    "min_lr_ratio": _ratio,
    "compile_mode": _one_of(COMPILE_MODES),
    "device": _device,
    "num_workers": _non_negative_int,
    "shuffle_chunk_rows": _positive_int,
    "wandb_project": _optional_text,
    "mlflow_experiment": _optional_text,
    "tensorboard_dir": _optional_path,
    "peak_flops": _optional_positive_number,
    "export_bundle": _boolean,
    "export_formats": _formats,
    "export_tolerance": _positive_number,
    "parallelism": _one_of(PARALLELISMS),
    "fsdp_wrap": _class_names,
    "activation_checkpointing": _boolean,
    "checkpoint_dir": _optional_path,
    "checkpoint_every_n_steps": _optional_positive_int,
    "keep_last_n_checkpoints": _optional_positive_int,
}
assert set(_VALIDATORS) == set(FIELD_NAMES), "every TrainingConfig field needs a validator"
