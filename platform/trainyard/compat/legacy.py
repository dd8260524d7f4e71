"""The legacy tier-3 API (`test_fine_tuning`, `test_hyperparameter_search`), translated.

Only translation lives here: old parameter names become a `TrainingConfig` exactly as
the migration table says, and `trainyard.Trainer` / `trainyard.hpo.sweep` do the work.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Mapping

from trainyard.engine.config import RENAMED_FIELDS, TrainingConfig
from trainyard.hpo import sweep
from trainyard.trainer import Trainer

_DEFAULTS = TrainingConfig()
LEGACY_WANDB_PROJECT = "transformer-builder-training"  # what use_wandb=True logged to

_FINE_TUNING_MIGRATION = """test_fine_tuning() is deprecated and will be removed; it now runs the trainyard engine.

Migrate with:
    from trainyard import Trainer, TrainingConfig
    training_config = TrainingConfig(epochs=10, learning_rate=5e-5, max_grad_norm=1.0,
                                     wandb_project="my-project")   # n_epochs, gradient_clip_norm, use_wandb
    results = Trainer(model, config, training_config).train(train_data, val_data)

The results dict has the same keys. See docs/migration.md."""

_SEARCH_MIGRATION = """test_hyperparameter_search() is deprecated and will be removed; it now runs a trainyard sweep (Ray Tune + Optuna).

Migrate with:
    from trainyard.hpo import sweep
    result = sweep(model_factory, config, train_data, val_data, num_samples=20,
                   space={"params": {"learning_rate": {"loguniform": [1e-5, 1e-3]},
                                     "batch_size": {"choice": [4, 8, 16]}}})
    result.best_params, result.study

See docs/migration.md."""


def test_fine_tuning(
    model: Any,
    config: Any,
    train_data: Any = None,
    val_data: Any = None,
    n_epochs: int = _DEFAULTS.epochs,
    learning_rate: float = _DEFAULTS.learning_rate,
    batch_size: int = _DEFAULTS.batch_size,
    weight_decay: float = _DEFAULTS.weight_decay,
    use_wandb: bool = False,
    use_amp: bool = _DEFAULTS.use_amp,
    gradient_accumulation_steps: int = _DEFAULTS.gradient_accumulation_steps,
    gradient_clip_norm: float | None = _DEFAULTS.max_grad_norm,
    random_seed: int = _DEFAULTS.random_seed,
    deterministic: bool = _DEFAULTS.deterministic,
    use_lr_schedule: bool = _DEFAULTS.use_lr_schedule,
) -> dict[str, Any]:
    """Deprecated: `Trainer(model, config, TrainingConfig(...)).train(train_data, val_data)`."""
    warnings.warn(_FINE_TUNING_MIGRATION, DeprecationWarning, stacklevel=2)

    training_config = legacy_training_config(
        n_epochs=n_epochs, learning_rate=learning_rate, batch_size=batch_size, weight_decay=weight_decay,
        use_wandb=use_wandb, use_amp=use_amp, gradient_accumulation_steps=gradient_accumulation_steps,
        gradient_clip_norm=gradient_clip_norm, random_seed=random_seed, deterministic=deterministic,
        use_lr_schedule=use_lr_schedule,
    )
    if train_data is None:
        train_data = synthetic_tokens(config, random_seed)
    return Trainer(model, config, training_config).train(train_data, val_data)


def legacy_training_config(**old: Any) -> TrainingConfig:
    """The migration table, as code: old parameter names -> TrainingConfig."""
    fields = {_new_name(k): v for k, v in old.items() if k != "use_wandb"}
    fields["wandb_project"] = LEGACY_WANDB_PROJECT if old.get("use_wandb") else None
    return TrainingConfig(**fields)


def synthetic_tokens(config: Any, seed: int, n: int = 32, length: int = 32) -> list:
    """What the old API trained on without data: random token ids from config.vocab_size."""
    import torch

    vocab = config.get("vocab_size") if isinstance(config, Mapping) else getattr(config, "vocab_size", None)
    if not isinstance(vocab, int) or vocab < 2:
        raise ValueError("test_fine_tuning without train_data makes synthetic tokens and needs config.vocab_size (an int >= 2)")
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (length,), generator=g) for _ in range(n)]


def _new_name(old: str) -> str:
    """The TrainingConfig field an old parameter name became (the engine's rename table)."""
    return RENAMED_FIELDS[old][0] if old in RENAMED_FIELDS else old


# The fields the old search took ranges for -> the distribution of a (low, high) range.
_SEARCH_RANGES = {"learning_rate": "loguniform", "weight_decay": "loguniform", "batch_size": "qrandint", "warmup_steps": "qrandint"}
# Old search-space keys (new names, and their old short forms) -> (field, distribution).
_SEARCH_KEYS = {key: (_new_name(key), _SEARCH_RANGES[_new_name(key)]) for key in [*_SEARCH_RANGES, *RENAMED_FIELDS] if _new_name(key) in _SEARCH_RANGES}
DEFAULT_SEARCH_SPACE = {"lr": (1e-5, 1e-3), "batch_size": [4, 8, 16], "wd": (1e-6, 1e-2)}


def legacy_search_space(search_space: Mapping[str, Any] | None) -> dict[str, Any]:
    """Old `{'lr': (lo, hi), 'batch_size': [..]}` -> a trainyard search space dict."""
    params = {}
    for key, value in (search_space or DEFAULT_SEARCH_SPACE).items():
        if key not in _SEARCH_KEYS:
            raise ValueError(f"search_space key {key!r} is not a legacy key; legacy keys are {sorted(_SEARCH_KEYS)}")
        field, range_kind = _SEARCH_KEYS[key]
        if isinstance(value, list):
            params[field] = {"choice": value}
        elif isinstance(value, tuple) and len(value) == 2:
            low, high = value
            if range_kind == "qrandint":
                params[field] = {"qrandint": [int(low), int(high), 1]}
            elif low <= 0:
                params[field] = {"uniform": [low, high]}  # a log scale cannot start at 0
            else:
                params[field] = {"loguniform": [low, high]}
        else:
            raise ValueError(f"search_space[{key!r}]={value!r}: use a (low, high) tuple for a range or a list of choices")
    return {"params": params}


def test_hyperparameter_search(
    model_factory: Callable[[], Any],
    config: Any,
    train_data: Any = None,
    n_trials: int = 20,
    search_space: Mapping[str, Any] | None = None,
    val_data: Any = None,
    n_epochs: int = _DEFAULTS.epochs,
    random_seed: int = _DEFAULTS.random_seed,
    **fixed: Any,
) -> dict[str, Any]:
    """Deprecated: `trainyard.hpo.sweep(...)` over the translated search space."""
    warnings.warn(_SEARCH_MIGRATION, DeprecationWarning, stacklevel=2)

    space = legacy_search_space(search_space)
    space["metric"] = "val/loss" if val_data is not None else "train/loss"
    space["mode"] = "min"
    base = legacy_training_config(n_epochs=n_epochs, random_seed=random_seed, **fixed)
    if train_data is None:
        train_data = synthetic_tokens(config, random_seed)
    result = sweep(model_factory, config, train_data, val_data, space=space, training_config=base, num_samples=n_trials, seed=random_seed)
    return {
        "best_params": dict(result.best_params),
        "best_value": result.best_metrics[space["metric"]],
        "trials": result.dataframe,
        "study": result.study,
        "best_config": result.best_config,
    }


# They are API functions, not tests: keep pytest from collecting them where users import them.
test_fine_tuning.__test__ = False  # type: ignore[attr-defined]
test_hyperparameter_search.__test__ = False  # type: ignore[attr-defined]
