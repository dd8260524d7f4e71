"""What the engine must know of the user's model, duck-typed (it never imports peft or
transformers): which of its state a checkpoint holds, and reading it back (all of it, or,
for a model with adapters, PEFT's, its own weights frozen and rebuilt by its factory on
resume, only the trainable parameters, so that checkpoints stay small and the base is never
copied); and a Hugging Face model's generation cache, which training does not build."""

from __future__ import annotations

import inspect

from torch import nn

from trainyard.engine import checkpoint as ckpt


def has_adapters(model: nn.Module) -> bool:
    """A PEFT model (also once FSDP has sharded it, or inside DDP's wrapper)."""
    model = getattr(model, "module", model)
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def checkpointed_names(model: nn.Module) -> set[str] | None:
    """The names of the parameters a checkpoint of `model` holds; None: its whole state."""
    if not has_adapters(model):
        return None
    return {name for name, p in model.named_parameters() if p.requires_grad}


def state_kind(model: nn.Module) -> str:
    """What a checkpoint of `model` holds: "whole", or "trainable" (its trainable parameters)."""
    return "whole" if not has_adapters(model) else "trainable"


def load_model_state(model: nn.Module, loaded: ckpt.LoadedCheckpoint) -> None:
    """The checkpoint's weights into `model`: all of them, or, where the checkpoint holds only
    the trainable parameters (a model with adapters), every one of those."""
    names = checkpointed_names(model)
    partial = loaded.state.get("model_state") == "trainable"
    if partial and names is None:
        raise ckpt.CheckpointError(f"checkpoint {loaded.path} holds only adapter weights (peft), and this model has no adapters: "
                                   "build it with the peft settings it was trained with (a peft section, or peft_config=)")
    try:
        missing, unexpected = model.load_state_dict(loaded.model, strict=not partial)
    except RuntimeError as e:
        raise ckpt.CheckpointError(f"checkpoint {loaded.path} does not fit this model: {' '.join(str(e).split())}") from e  # PyTorch's lines, on one
    if partial:
        absent = sorted(names & set(missing))
        if unexpected or absent:
            what = f"has parameters this model lacks: {unexpected[:3]}" if unexpected else f"lacks trainable parameters of this model: {absent[:3]}"
            raise ckpt.CheckpointError(f"checkpoint {loaded.path} holds the trainable parameters of a model with adapters, and {what}; "
                                       "resume with the peft settings it was trained with")


def without_generation_cache(model: nn.Module) -> bool:
    """A Hugging Face model builds its key/value cache for generation (`config.use_cache`) in
    every forward, training ones too: a concatenation per layer, kept in the graph for the
    backward pass (5% of a LoRA step on a small GPT-2). Hugging Face's Trainer turns the
    setting off for good; here a forward pre-hook passes `use_cache=False` while the model
    trains, unless the caller passes it, so the model and its export keep the setting for
    generation. Whether `model` (or the first module in it with such a config) got the hook."""
    for module in model.modules():
        if not getattr(getattr(module, "config", None), "use_cache", False) or not _takes_use_cache(module):
            continue
        if not getattr(module, "_trainyard_no_cache", False):
            module.register_forward_pre_hook(_no_cache_while_training, with_kwargs=True)
            module._trainyard_no_cache = True
        return True
    return False


def _takes_use_cache(module: nn.Module) -> bool:
    try:
        params = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False
    return "use_cache" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _no_cache_while_training(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    if module.training and kwargs.get("use_cache") is None:
        return args, {**kwargs, "use_cache": False}
    return None
