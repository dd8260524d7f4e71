"""Sweeps: Ray Tune with an Optuna searcher over search spaces in `tune_spaces/`.

    from trainyard.hpo import load_search_space, sweep
    result = sweep(model_factory, config, train_data, val_data, space="tune_spaces/addition_small.yaml")

    space.py    search spaces: YAML, validation, Tune and Optuna forms
    runner.py   sweep(): Tuner + OptunaSearch + ASHA, trials on the engine, SweepResult
    report.py   best_config.yaml, trials.csv and the plots of a finished sweep

(Seed 004's sweep helpers, from an experiment spec and a study: trainyard.compat.sweeps.)

Nothing here imports Ray or Optuna until a sweep runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainyard.hpo.space import SearchSpace, load_search_space

__all__ = ["SearchSpace", "SweepResult", "load_search_space", "sweep"]


def __getattr__(name: str):
    if name in ("sweep", "SweepResult"):
        import importlib

        return getattr(importlib.import_module("trainyard.hpo.runner"), name)
    raise AttributeError(f"module 'trainyard.hpo' has no attribute {name!r}")


if TYPE_CHECKING:  # pragma: no cover
    from trainyard.hpo.runner import SweepResult, sweep
