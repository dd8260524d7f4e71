"""Which of a model's state a checkpoint holds, and reading it back: all of it, or, for a
model with adapters (PEFT: its own weights frozen, rebuilt by its factory on resume), only
the trainable parameters, so that checkpoints stay small and the base is never copied.
Duck-typed: the engine never imports peft."""

from __future__ import annotations

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


def load_model_state(model: nn.Module, loaded: ckpt.LoadedCheckpoint) -> None:
    """The checkpoint's weights into `model`: all of them, or, where the checkpoint holds only
    the trainable parameters (a model with adapters), every one of those."""
    partial = loaded.state.get("model_state") == "trainable"
    if partial and checkpointed_names(model) is None:
        raise ckpt.CheckpointError(f"checkpoint {loaded.path} holds only the adapters of a model with adapters (peft), and this model has "
                                   "none: build it with the peft settings it was trained with")
    try:
        missing, unexpected = model.load_state_dict(loaded.model, strict=not partial)
    except RuntimeError as e:
        raise ckpt.CheckpointError(f"checkpoint {loaded.path} does not fit this model: {' '.join(str(e).split())}") from e  # PyTorch's lines, on one
    absent = sorted((checkpointed_names(model) or set()) & set(missing))
    if partial and (unexpected or absent):
        what = f"has parameters this model lacks: {unexpected[:3]}" if unexpected else f"lacks trainable parameters of this model: {absent[:3]}"
        raise ckpt.CheckpointError(f"checkpoint {loaded.path} holds the trainable parameters of a model with adapters, and {what}; "
                                   "resume with the peft settings it was trained with")
