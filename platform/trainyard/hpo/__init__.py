"""Sweeps: Ray Tune with an Optuna searcher over search spaces in `tune_spaces/`.

    from trainyard.hpo import load_search_space, sweep
    result = sweep(model_factory, config, train_data, val_data, space="tune_spaces/addition_small.yaml")

Nothing here imports Ray or Optuna until a sweep runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainyard.hpo.space import SearchSpace, load_search_space
from trainyard.hpo.study import create_search_space, extract_best_config_from_study, run_local_hpo_sweep

__all__ = [
    "SearchSpace", "SweepResult", "create_search_space", "extract_best_config_from_study",
    "load_search_space", "run_local_hpo_sweep", "sweep",
]


def __getattr__(name: str):
    if name in ("sweep", "SweepResult"):
        import importlib

        return getattr(importlib.import_module("trainyard.hpo.runner"), name)
    raise AttributeError(f"module 'trainyard.hpo' has no attribute {name!r}")


if TYPE_CHECKING:  # pragma: no cover
    from trainyard.hpo.runner import SweepResult, sweep
