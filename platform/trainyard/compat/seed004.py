"""The functions of seeds/004 (the `training` package API), gathered from their homes: the
seed's own names live in this package (training.py, sweeps.py, final.py), translated onto
trainyard; the rest are trainyard's own. Names load on first use, so importing a legacy
path pulls in neither torch, Ray nor Optuna.
"""

from __future__ import annotations

import importlib
from typing import Any

HOMES = {
    "train_model": "trainyard.compat.training",
    "create_model_and_tokenizer": "trainyard.compat.training",
    "build_training_config": "trainyard.compat.training",
    "compute_metrics": "trainyard.compat.training",
    "evaluate_model": "trainyard.compat.training",
    "create_search_space": "trainyard.compat.sweeps",
    "run_local_hpo_sweep": "trainyard.compat.sweeps",
    "extract_best_config_from_study": "trainyard.compat.sweeps",
    "execute_final_training": "trainyard.compat.final",
    "extract_lineage_from_best_model": "trainyard.compat.final",
    "create_run_context": "trainyard.execution.contexts",
    "create_kfold_splits": "trainyard.data.splits",
    "load_dataset": "trainyard.data.loaders",
}

__all__ = sorted(HOMES)


def __getattr__(name: str) -> Any:
    if name not in HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(HOMES[name]), name)
    globals()[name] = value
    return value
