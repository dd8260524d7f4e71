"""The rules each `TrainingConfig` field's value must follow, and the optimizer's own
arguments (checked by building the optimizer on one parameter). A broken rule raises
`ValueError` naming the field, the value and what is allowed.

    check_field("lr_schedule", "linear")     # one field's value, on its own
    optimizer_class("sgd")                   # the torch.optim class a name means
"""

from __future__ import annotations

import difflib
import inspect
import re
from typing import Any, Mapping

COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune")
EXPORT_FORMATS = ("onnx", "torchscript", "pt2", "hf")  # hf: save_pretrained, for Hugging Face models
AMP_DTYPES = (None, "bfloat16", "float16")
PARALLELISMS = ("ddp", "fsdp")
LR_SCHEDULES = ("cosine", "linear", "constant")  # each after warmup_steps of linear warmup
METRIC_NAMES = ("loss", "perplexity", "accuracy", "exact_match")  # what train/* and val/* measure
EARLY_STOPPING_MODES = (None, "min", "max")
# torch.optim optimizers the engine's step cannot drive, and why.
_UNSUPPORTED_OPTIMIZERS = {
    "lbfgs": "needs a closure that re-evaluates the loss",
    "sparseadam": "needs sparse gradients",
    "muon": "updates matrices only, and a model has biases and norms too",
}



def check_field(name: str, value: Any) -> None:
    """Validate one field's value on its own (a search space's values: the checks between
    fields need the whole config, which each trial builds)."""
    if name == "optimizer" and isinstance(value, str):
        value = value.lower()
    VALIDATORS[name](name, plain_scalar(value))


def optimizer_classes() -> dict[str, type]:
    """The torch.optim optimizers the engine can drive, by lower-case name."""
    import torch.optim

    classes = {}
    for name in dir(torch.optim):
        obj = getattr(torch.optim, name)
        if isinstance(obj, type) and issubclass(obj, torch.optim.Optimizer) and obj is not torch.optim.Optimizer:
            if name.lower() not in _UNSUPPORTED_OPTIMIZERS:
                classes[name.lower()] = obj
    return classes


def optimizer_class(name: str) -> type:
    return optimizer_classes()[name]


def check_optimizer_kwargs(name: str, kwargs: dict[str, Any] | None, learning_rate: float) -> None:
    """The optimizer's own arguments, checked by building it on one parameter: its own
    error for a bad value, and the names it takes for an unknown one."""
    if name == "adamw" and not kwargs:
        return  # the default: nothing to check, and no torch import for it
    import torch

    cls = optimizer_class(name)
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "params", "lr", "weight_decay", "args", "kwargs")]
    for key in kwargs or {}:
        if key in ("lr", "weight_decay"):
            field = "learning_rate" if key == "lr" else "weight_decay"
            raise _bad("optimizer_kwargs", kwargs, f"set {key} with the TrainingConfig field {field!r}, not in optimizer_kwargs")
        if key not in accepted:
            close = difflib.get_close_matches(str(key), accepted, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise _bad("optimizer_kwargs", kwargs, f"{cls.__name__} takes no argument {key!r}; {hint}it takes {accepted}")
    try:
        cls([torch.zeros(1, requires_grad=True)], lr=learning_rate, **optimizer_arguments(kwargs))
    except Exception as e:  # noqa: BLE001 - whatever the constructor raises (betas=[0.9] is an IndexError), the arguments are bad
        raise _bad("optimizer_kwargs", kwargs, f"{cls.__name__} refused it ({type(e).__name__}: {e})") from None


def optimizer_arguments(kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """optimizer_kwargs as the optimizer takes them (YAML's lists as tuples: betas)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in (kwargs or {}).items()}


# -- per-field validation ---------------------------------------------------------------


def plain_scalar(v: Any) -> Any:
    """A NumPy scalar as the plain bool, int or float it holds (np.float64 subclasses float,
    np.bool_ is no bool): the config is saved as YAML and JSON, which take plain values only.
    Recognised by its module, so NumPy need not be imported here."""
    if type(v).__module__ != "numpy" or not hasattr(v, "item"):
        return v
    plain = v.item()
    return plain if isinstance(plain, (bool, int, float)) else v


def is_int(v: Any) -> bool:
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
    if not is_int(v) or v < 1:
        raise _bad(name, v, "must be an integer >= 1")


def _non_negative_int(name, v):
    if not is_int(v) or v < 0:
        raise _bad(name, v, "must be an integer >= 0")


def _optional_positive_int(name, v):
    if v is not None and (not is_int(v) or v < 1):
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
    if not is_int(v) or not 0 <= v < 2**32:
        raise _bad(name, v, "must be an integer in [0, 2**32 - 1] (NumPy's generators take no larger seed)")


def _device(name, v):
    if v is None:
        return
    if not isinstance(v, str) or not re.fullmatch(r"(cpu|cuda|mps|xpu)(:\d+)?", v):
        raise _bad(name, v, "must be None (auto), 'cpu', 'cuda', 'cuda:N' or 'mps'")


def _class_names(name, v):
    if v is not None and (not isinstance(v, tuple) or not v or not all(isinstance(c, str) and c.isidentifier() for c in v)):
        raise _bad(name, list(v) if isinstance(v, tuple) else v, "must be a list of module class names (e.g. ['Block']), or None to detect the repeated blocks")


def _optimizer(name, v):
    if not isinstance(v, str):
        raise _bad(name, v, "must be the name of a torch.optim optimizer, e.g. 'adamw', 'sgd', 'adafactor'")
    if v == "adamw":
        return
    classes = optimizer_classes()
    if v not in classes:
        close = difflib.get_close_matches(v, list(classes), n=1)
        why = f" ({v} {_UNSUPPORTED_OPTIMIZERS[v]})" if v in _UNSUPPORTED_OPTIMIZERS else ""
        hint = f"did you mean {close[0]!r}? " if close and v not in _UNSUPPORTED_OPTIMIZERS else ""
        raise _bad(name, v, f"must name a torch.optim optimizer the training loop can drive{why}; {hint}choose one of {sorted(classes)}")


def _keyword_arguments(name, v):
    if v is None:
        return
    if not isinstance(v, dict) or not all(isinstance(k, str) and k.isidentifier() for k in v):
        raise _bad(name, v, "must be a mapping of argument name to value (e.g. {'momentum': 0.9}), or None")
    for key, value in v.items():
        plain = (bool, int, float, str, type(None))
        if not (isinstance(value, plain) or (isinstance(value, list) and all(isinstance(x, plain) for x in value))):
            raise _bad(name, v, f"argument {key!r}={value!r}: values must be numbers, booleans, strings or lists of them (they are saved as YAML)")


def _metric(name, v):
    if v is None:
        return
    allowed = [f"{split}/{m}" for split in ("val", "train") for m in METRIC_NAMES]
    if v not in allowed:
        close = difflib.get_close_matches(str(v), allowed, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise _bad(name, v, f"{hint}must be one of {allowed}, or None")


def _formats(name, v):
    if not isinstance(v, tuple) or any(f not in EXPORT_FORMATS for f in v):
        raise _bad(name, list(v) if isinstance(v, tuple) else v, f"must be a list drawn from {list(EXPORT_FORMATS)}")


VALIDATORS = {
    "learning_rate": _positive_number,
    "batch_size": _positive_int,
    "epochs": _positive_int,
    "weight_decay": _non_negative_number,
    "max_grad_norm": _optional_positive_number,
    "use_amp": _boolean,
    "amp_dtype": _one_of(AMP_DTYPES),
    "gradient_accumulation_steps": _positive_int,
    "global_batch_size": _optional_positive_int,
    "random_seed": _seed,
    "deterministic": _boolean,
    "optimizer": _optimizer,
    "optimizer_kwargs": _keyword_arguments,
    "use_lr_schedule": _boolean,
    "lr_schedule": _one_of(LR_SCHEDULES),
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
    "eval_every_n_steps": _optional_positive_int,
    "train_metrics_every_n_steps": _positive_int,
    "early_stopping_metric": _metric,
    "early_stopping_patience": _positive_int,
    "early_stopping_mode": _one_of(EARLY_STOPPING_MODES),
    "early_stopping_min_delta": _non_negative_number,
}
