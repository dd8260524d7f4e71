"""Parameter-efficient fine-tuning with the `peft` library (pip install 'trainyard[peft]').

    peft: {method: lora, r: 16, alpha: 32, dropout: 0.05, target_modules: [c_attn]}   # YAML
    Trainer(model, config, training_config, peft_config=LoraConfig(r=16))             # Python

`method` names any PEFT method (`lora`, `ia3`, `loha`, ...; lora by default); the other keys are
its config class's fields (`alpha` and `dropout` stand for LoRA's `lora_alpha` and
`lora_dropout`). Only the adapters train. A checkpoint holds only the trainable parameters,
never the frozen base, which the model's own factory rebuilds on resume. `merge_adapters`
(true by default) says whether the export bundle's `hf/` holds the model with the adapters
merged into it, or the adapters alone beside the base they were trained on.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import warnings
from typing import Any, Callable, Mapping

from torch import nn

ALIASES = {"alpha": "lora_alpha", "dropout": "lora_dropout"}
_OTHER_NAMES = {"rank": "r", "lora_r": "r", "lora_rank": "r", "target_layers": "target_modules", "modules": "target_modules"}  # other libraries' words
OWN_KEYS = ("method", "merge_adapters")  # ours, not the PEFT config's
SEARCHED = "peft"  # the model config key under which a sweep's trial hands over its peft.* values (hpo.space.ADAPTER_KEY)


def _peft():
    try:
        import peft
    except ImportError:
        raise ImportError("a peft section needs the peft package: pip install 'trainyard[peft]' (or pip install peft)") from None
    return peft


def _config_classes() -> dict[str, type]:
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    return {str(kind.value).lower(): cls for kind, cls in PEFT_TYPE_TO_CONFIG_MAPPING.items()}


def check_section(section: Mapping[str, Any]) -> None:
    """The method and every key, checked where the config is read (one line each)."""
    peft_config(section)


def peft_config(section: Any, task: str | None = None, hugging_face: bool = True):
    """A PEFT config from a section (a dict) or a PEFT config as it is. A Hugging Face model is
    given the task type its task needs (`CAUSAL_LM`, or `SEQ_CLS`: the classifier head then
    trains too); any other module gets the plain wrapper, which calls it as it is."""
    _peft()
    if not isinstance(section, Mapping):
        if not hasattr(section, "peft_type"):
            raise TypeError(f"peft_config must be a PEFT config (e.g. peft.LoraConfig) or a dict of its fields, got {type(section).__name__}")
        return section
    options = {k: v for k, v in section.items() if k not in OWN_KEYS}
    method = str(section.get("method", "lora")).lower()
    classes = _config_classes()
    if method not in classes:
        close = difflib.get_close_matches(method, list(classes), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"peft.method={section.get('method')!r} is not a PEFT method: {hint}they are {sorted(classes)}")
    cls = classes[method]
    fields = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in ("peft_type",)]
    kwargs = {}
    for key, value in options.items():
        name = ALIASES.get(key, key) if ALIASES.get(key) in fields else key
        if name not in fields:
            close = [_OTHER_NAMES[key]] if _OTHER_NAMES.get(key) in fields else difflib.get_close_matches(
                str(key), [*fields, *(a for a, f in ALIASES.items() if f in fields)], n=1)
            hint = f"did you mean peft.{close[0]}?" if close else f"{cls.__name__} takes {', '.join(fields)}"
            raise ValueError(f"peft.{key} is not a setting of {method}: {hint}")
        kwargs[name] = value
    if hugging_face and "task_type" not in kwargs and "task_type" in fields:
        kwargs["task_type"] = "SEQ_CLS" if task in ("classification", "regression") else "CAUSAL_LM"
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"peft: {method} refuses these settings ({type(e).__name__}: {e})") from None


def with_adapters(model: nn.Module, config: Any, task: str | None = None) -> nn.Module:
    """`model` with PEFT adapters added (its own weights frozen). What peft refuses is one line
    naming the setting; a `target_modules` that matches nothing, or none given for a model
    that is not a Hugging Face one, lists the model's layer names."""
    peft = _peft()
    hugging_face = hasattr(model, "save_pretrained")
    config = peft_config(config, task, hugging_face)
    if not hugging_face and getattr(config, "task_type", None) is not None:
        config = dataclasses.replace(config, task_type=None)  # the task wrappers call a Hugging Face model's keywords
    targets = getattr(config, "target_modules", None)
    if not hugging_face and hasattr(config, "target_modules") and not targets:  # peft guesses only for Hugging Face models
        raise ValueError(f"peft.target_modules is needed for {type(model).__name__} (not a Hugging Face model): name the layers "
                         f"to adapt; its layers are named {_layer_names(model)}")
    try:
        with warnings.catch_warnings():  # two lines of peft's and transformers' own business, per process
            warnings.filterwarnings("ignore", message="fan_in_fan_out is set to False")  # GPT-2's Conv1D: peft sets it right
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.* is deprecated", category=FutureWarning)
            return peft.get_peft_model(model, config)
    except (ValueError, TypeError, KeyError) as e:
        if "target modules" in str(e).lower():
            given = sorted(targets) if isinstance(targets, (set, list, tuple)) else targets
            raise ValueError(f"peft.target_modules={given!r} names no layer of {type(model).__name__}: its layers are named "
                             f"{_layer_names(model)}") from None
        raise ValueError(f"peft: {type(config).__name__} cannot be added to {type(model).__name__} ({type(e).__name__}: {e})") from None


def _layer_names(model: nn.Module) -> list[str]:
    """The names `target_modules` can match: the last part of each adaptable layer's name."""
    names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Embedding, nn.Conv1d)) or type(m).__name__ == "Conv1D"}
    return sorted(n for n in names if not n.isdigit())  # a Sequential's numbered children: named by their parent


def adapter_builder(builder: Callable[[Any], nn.Module], section: Any, task: str | None) -> Callable[[Any], nn.Module]:
    """`builder` (model config -> model) with the adapters added to what it builds; picklable."""
    return functools.partial(_build_with_adapters, builder, section, task)


def with_adapters_of(factory: Callable[[], nn.Module], section: Any, task: str | None) -> nn.Module:
    """What a zero-argument model factory builds, with adapters."""
    return with_adapters(factory(), section, task)


def _build_with_adapters(builder: Callable[[Any], nn.Module], section: Any, task: str | None, model_config: Any) -> nn.Module:
    if isinstance(model_config, Mapping) and SEARCHED in model_config:  # a sweep's trial: its peft.* values
        model_config = dict(model_config)
        section = {**section, **model_config.pop(SEARCHED)}
    return with_adapters(builder(model_config), section, task)

