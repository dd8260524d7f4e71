"""Setup: the parts a run is built from, each from the TrainingConfig.

    datasets(train, val, ctx, cfg)     the data as datasets, checked against the world size
    resume_source(ctx, resume_from)    where a run continues from (the environment's checkpoint first)
    checkpoint_to_load(source, model)  the newest checkpoint there that loads into the model
    build_parts(model, cfg, ctx, loaded)   its wrapped form, optimizer and AMP, state loaded
    build_model(model_or_factory)      the user's module (a factory is called here, seeded)
    build_optimizer(model, cfg)        AdamW, weight decay on matrices only
    amp_policy(cfg, device)            autocast dtype and GradScaler
    ModelCall(model, compile_mode)     the model as trained and its loss: compiled, or eager
    run_directory(ctx, cfg, loaded)    where checkpoints go, never over another run's
    run_id()                           the timestamp-uuid id of every run name
    blocks(model, class_names)         the repeated blocks (sharded apart under FSDP, recomputed
                                       by activation_checkpointing)
    determinism(enabled, device)       deterministic algorithms for the run, restored after
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.utils.checkpoint
from torch import nn

from trainyard.engine import checkpoint as ckpt
from trainyard.engine import run_folder
from trainyard.engine.config import TrainingConfig
from trainyard.engine.context import RunContext
from trainyard.engine.data.inputs import as_dataset
from trainyard.engine.data.rows import RowSource
from trainyard.engine.fields import optimizer_arguments, optimizer_class
from trainyard.engine.model_config import model_config_value
from trainyard.engine.task import compute_loss
from trainyard.engine.trainable import load_model_state, without_generation_cache


def datasets(train_data: Any, val_data: Any, ctx: RunContext, cfg: TrainingConfig) -> tuple[Any, Any]:
    """(train, val) as datasets; refused when empty, or when there are fewer training samples
    than workers. Row sources read in the chunks the epoch's order visits."""
    train_ds = as_dataset(train_data, "train_data")
    if train_ds is None or len(train_ds) == 0:
        raise ValueError("train_data is empty: it needs at least one sample")
    val_ds = as_dataset(val_data, "val_data")
    if val_ds is not None and len(val_ds) == 0:
        raise ValueError("val_data is empty: pass None to train without validation")
    if len(train_ds) < ctx.world_size:
        raise ValueError(f"train_data has {len(train_ds)} samples, fewer than the {ctx.world_size} workers: every worker needs one; use fewer workers (scaling=, --workers) or more data")
    for ds in (train_ds, val_ds):
        if isinstance(ds, RowSource):
            ds.chunk_rows = cfg.shuffle_chunk_rows
    return train_ds, val_ds


def vocabulary(model: nn.Module, config: Any) -> int | None:
    """How many token ids the model embeds: its config's vocab_size, else its input
    embedding's rows (a Hugging Face model's get_input_embeddings()); None where neither says
    (never guessed from whichever embedding a model holds first)."""
    declared = model_config_value(config, "vocab_size")
    if isinstance(declared, int) and not isinstance(declared, bool) and declared > 0:
        return declared
    get = getattr(model, "get_input_embeddings", None)
    embedding = get() if callable(get) else None
    return embedding.num_embeddings if isinstance(embedding, nn.Embedding) else None


def check_token_ids(model: nn.Module, config: Any, train_ds: Any, val_ds: Any, task: str) -> int | None:
    """Every dataset's token ids against the model's embedding, before the first step, where
    their range is known without reading them all (columns, Parquet statistics, Ray blocks).
    Returns the vocabulary size to check each training batch against where the training
    data's range is not known (else None)."""
    vocab_size = vocabulary(model, config)
    if vocab_size is None:
        return None
    for name, ds in (("train_data", train_ds), ("val_data", val_ds)):
        found = ds.id_range() if ds is not None else None
        if found is not None:
            found.check(vocab_size, name, task)
    return vocab_size if train_ds.id_range() is None else None


def resume_source(ctx: RunContext, resume_from: Any) -> Path | None:
    """Where a run continues from: the environment's checkpoint (after a restart it is newer
    than `resume_from`), else `resume_from` (a checkpoint, or a run directory); None: fresh."""
    path = ctx.checkpoint_to_resume()
    return path if path is not None else (ckpt.local_path(resume_from) if resume_from is not None else None)


def checkpoint_to_load(source: Path | None, model: nn.Module, warn: Callable[[str], None]) -> ckpt.LoadedCheckpoint | None:
    """The checkpoint at `source`, loaded, its weights read into `model`; a run directory's
    are tried newest first, and one that does not load or does not fit the model is skipped
    (through `warn`) for an older one. None for a fresh run."""
    if source is None:
        return None
    *newer, oldest = run_folder.candidates(source, warn=warn)
    for candidate in newer:
        try:
            return _load_into(candidate, model)
        except ckpt.CheckpointError as e:
            warn(f"skipping {e}; falling back to an older checkpoint")
    return _load_into(oldest, model)


def _load_into(path: Path, model: nn.Module) -> ckpt.LoadedCheckpoint:
    loaded = ckpt.load(path)
    if not loaded.sharded:  # a sharded one is read into the model as it is laid out (build_parts)
        load_model_state(model, loaded)
    return loaded


@dataclass
class Parts:
    raw_model: nn.Module  # the user's module
    model: nn.Module  # as the context prepared it (DDP / FSDP)
    optimizer: torch.optim.Optimizer
    amp_dtype: torch.dtype | None
    scaler: Any


def check_context(cfg: TrainingConfig, ctx: RunContext) -> None:
    """The run context can do what `cfg` asks of it."""
    if cfg.parallelism == "fsdp" and not ctx.shards_state:
        raise ValueError(
            f"parallelism='fsdp' needs a run context that shards the model, and {type(ctx).__name__} does not: pass "
            "scaling=N to the Trainer (e.g. scaling=2; --workers N on the command line) to shard across Ray Train "
            "workers; in a hand-written Ray Train loop use create_run_context(training_config=training_config); "
            "or use parallelism='ddp'"
        )


def build_parts(raw_model: nn.Module, cfg: TrainingConfig, ctx: RunContext, loaded: ckpt.LoadedCheckpoint | None) -> Parts:
    """The model prepared for `ctx`, its optimizer and AMP policy, with `loaded`'s state read
    into them (a sharded checkpoint resharded to how they are laid out here; a whole one's
    weights are in `raw_model` already)."""
    if cfg.activation_checkpointing:
        checkpoint_activations(raw_model, cfg.fsdp_wrap)
    without_generation_cache(raw_model)  # a Hugging Face model's generation cache, not built while it trains
    model = ctx.prepare_model(raw_model)
    amp_dtype, scaler = amp_policy(cfg, ctx.device)
    optimizer = build_optimizer(raw_model, cfg)
    if loaded is not None:
        saved = loaded.state["training_config"].get("optimizer", "adamw")  # older checkpoints: AdamW
        if saved != cfg.optimizer:
            raise ValueError(
                f"cannot resume from {loaded.path} with optimizer={cfg.optimizer!r}: it holds {saved}'s state (moment "
                f"estimates, step counts), which {cfg.optimizer} cannot continue from; use optimizer={saved!r}, or start a "
                "new run from its weights alone"
            )
    if loaded is not None and loaded.sharded:
        ctx.load_state(loaded.path, raw_model, optimizer, grads=bool(loaded.state.get("sharded_grads")))
    elif loaded is not None:
        try:
            optimizer.load_state_dict(loaded.optimizer)
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise ckpt.CheckpointError(f"checkpoint {loaded.path}: file optimizer.pt does not fit this model's optimizer ({type(e).__name__}: {e})") from e
    if loaded is not None and scaler is not None and loaded.extra.get("scaler"):
        scaler.load_state_dict(loaded.extra["scaler"])
    return Parts(raw_model, model, optimizer, amp_dtype, scaler)


def build_model(model_or_factory: nn.Module | Callable[[], nn.Module]) -> nn.Module:
    if isinstance(model_or_factory, nn.Module):
        return model_or_factory
    model = model_or_factory()
    if not isinstance(model, nn.Module):
        raise TypeError(f"the model factory returned {type(model).__name__}, not a torch.nn.Module")
    return model


def blocks(model: nn.Module, class_names: tuple[str, ...] | None = None) -> list[nn.Module]:
    """The model's repeated blocks: the children of its nn.ModuleLists (transformer layers),
    or, with `class_names`, every module of those classes. Outermost only: a block inside
    another block is part of it."""
    if class_names:
        found = [m for m in model.modules() if type(m).__name__ in class_names]
        if not found:
            classes = sorted({type(m).__name__ for m in model.modules()})
            raise ValueError(f"fsdp_wrap={list(class_names)} matches no module of {type(model).__name__}; its module classes are {classes}")
    else:
        found = [child for m in model.modules() if isinstance(m, nn.ModuleList) for child in m]
    inner = {id(sub) for block in found for sub in block.modules() if sub is not block}
    return [b for b in found if id(b) not in inner]


def checkpoint_activations(model: nn.Module, class_names: tuple[str, ...] | None = None) -> int:
    """Recompute each block's activations in the backward pass instead of keeping them
    (non-reentrant torch.utils.checkpoint; random state is replayed, so dropout masks and
    results are the same). Returns how many blocks; refuses a model with none. A Hugging Face
    model is switched through its own switch (it knows its layers): `activation_checkpointing_enable`,
    `gradient_checkpointing_enable` before transformers 5."""
    switch = getattr(model, "activation_checkpointing_enable", None) or getattr(model, "gradient_checkpointing_enable", None)
    if class_names is None and getattr(model, "supports_gradient_checkpointing", False) and switch is not None:
        switch({"use_reentrant": False})  # its first argument: the kwargs of torch.utils.checkpoint, in both versions
        return sum(1 for m in model.modules() if getattr(m, "gradient_checkpointing", False) and m is not model)
    found = blocks(model, class_names)
    if not found:
        raise ValueError(
            f"activation_checkpointing=True found no repeated blocks in {type(model).__name__} (no nn.ModuleList children): "
            "name the block classes with fsdp_wrap=['MyBlock'], or set activation_checkpointing=False"
        )
    for block in found:
        block.forward = functools.partial(_checkpointed, block.forward)
    return len(found)


def _checkpointed(forward, *args, **kwargs):
    return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)


def forward_kwargs(model: nn.Module) -> tuple[str, ...]:
    """Optional inputs the model's forward takes by name (e.g. attention_mask)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return ()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return ("attention_mask",)
    return tuple(k for k in ("attention_mask",) if k in params)


def build_optimizer(model: nn.Module, cfg: TrainingConfig) -> torch.optim.Optimizer:
    """`cfg.optimizer` (AdamW by default) with `cfg.optimizer_kwargs`; weight decay on
    matrices only (embeddings and linear weights), not biases or norms."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (all have requires_grad=False)")
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    cls = optimizer_class(cfg.optimizer)
    kwargs = optimizer_arguments(cfg.optimizer_kwargs)
    # The fused kernel updates every parameter in a few launches (PyTorch's default on a CPU is
    # a Python loop over the parameters), and it can skip a non-finite step on the device.
    # Where the optimizer has one and the user did not choose.
    fusable = "fused" in inspect.signature(cls.__init__).parameters and "fused" not in kwargs
    if fusable and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params):
        try:
            return cls(groups, lr=cfg.learning_rate, fused=True, **kwargs)
        except (RuntimeError, ValueError):  # an older PyTorch without a fused kernel for this device, or an option it lacks
            pass
    return cls(groups, lr=cfg.learning_rate, **kwargs)


def amp_policy(cfg: TrainingConfig, device: torch.device) -> tuple[torch.dtype | None, Any]:
    """(autocast dtype or None, GradScaler or None) for `cfg.use_amp` on `device`."""
    if not cfg.use_amp:
        return None, None
    if device.type == "cuda":
        if cfg.amp_dtype == "bfloat16" or (cfg.amp_dtype is None and torch.cuda.is_bf16_supported()):
            return torch.bfloat16, None
        return torch.float16, torch.amp.GradScaler("cuda")
    if device.type == "cpu":
        return (torch.float16 if cfg.amp_dtype == "float16" else torch.bfloat16), None
    return (torch.bfloat16 if cfg.amp_dtype == "bfloat16" else torch.float16), None


class ModelCall:
    """The model as trained (maybe DDP- or FSDP-wrapped) and the loss, both compiled with
    torch.compile when `mode` is set: the loss too, since its softmax over the vocabulary is
    the step's largest memory traffic. torch.compile fails lazily, at the first call, so
    that call is tried once (`pending`) and a failure falls back to eager for the run."""

    def __init__(self, model: nn.Module, mode: str | None):
        self.mode, self.pending = mode, bool(mode)
        self.model, self.loss_fn = model, compute_loss
        if mode:
            self.model, self.loss_fn = try_compile(model, mode), try_compile(compute_loss, mode)

    def fall_back(self, error: Exception) -> None:
        """The first compiled call failed: say so once, and train eagerly from here."""
        first_line = str(error).splitlines()[0] if str(error) else ""
        warnings.warn(
            f"torch.compile(mode={self.mode!r}) is unavailable here ({type(error).__name__}: {first_line}); training in eager mode",
            RuntimeWarning, stacklevel=3,
        )
        self.model, self.loss_fn = getattr(self.model, "_orig_mod", self.model), compute_loss


def try_compile(model: nn.Module | Callable, mode: str) -> nn.Module | Callable:
    try:
        return torch.compile(model, mode=mode)
    except Exception as e:  # noqa: BLE001
        warnings.warn(f"torch.compile(mode={mode!r}) is unavailable here ({e}); training in eager mode", RuntimeWarning, stacklevel=3)
        return model


def run_id() -> str:
    """`YYYYmmdd-HHMMSS-<6 hex>`: unique, and sortable by start time (every run name uses it)."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


def run_directory(ctx: RunContext, cfg: TrainingConfig, loaded: ckpt.LoadedCheckpoint | None) -> Path:
    """The run context's folder, else `checkpoint_dir`, else the resumed checkpoint's run, else
    `checkpoints/<timestamp-id>`; a fresh run never writes beside another run's checkpoints,
    and no two runs write in one folder at once (the run claims it; the loop releases it).
    Created and checked writable here, before any training."""
    if ctx.run_dir is not None:
        run_dir = ctx.run_dir.resolve()
    elif cfg.checkpoint_dir is not None:
        run_dir = Path(cfg.checkpoint_dir).resolve()
    elif loaded is not None:
        run_dir = loaded.path.parent.resolve()
    else:
        run_dir = Path("checkpoints", run_id()).resolve()
    run_folder.claim(run_dir)  # first (it creates the folder): of two runs started at once, one gets it
    if loaded is None and run_folder.list_checkpoints(run_dir):
        run_folder.release(run_dir)
        raise run_folder.RunFolderInUse(run_dir, "already holds checkpoints of an earlier run", f"pass resume_from={str(run_dir)!r} to continue it")
    run_folder.tidy(run_dir)
    return run_dir


@contextlib.contextmanager
def determinism(enabled: bool, device: torch.device):
    if not enabled:
        yield
        return
    previous = torch.are_deterministic_algorithms_enabled()
    previous_benchmark = torch.backends.cudnn.benchmark
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
        torch.backends.cudnn.benchmark = previous_benchmark
