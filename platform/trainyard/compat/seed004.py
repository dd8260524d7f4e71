"""The functions of seeds/004 (the `training` package API), re-exported from their trainyard
homes. This is the one place they are gathered; trainyard's own packages do not re-export
them. Names load on first use, so importing a legacy path pulls in neither torch, Ray
nor Optuna.
"""

from __future__ import annotations

import importlib
from typing import Any

HOMES = {
    "train_model": "trainyard.experiment.train",
    "create_model_and_tokenizer": "trainyard.experiment.train",
    "build_training_config": "trainyard.experiment.build",
    "compute_metrics": "trainyard.engine.metrics",
    "evaluate_model": "trainyard.engine.metrics",
    "create_search_space": "trainyard.hpo.study",
    "run_local_hpo_sweep": "trainyard.hpo.study",
    "extract_best_config_from_study": "trainyard.hpo.study",
    "execute_final_training": "trainyard.pipeline.final",
    "extract_lineage_from_best_model": "trainyard.pipeline.final",
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
