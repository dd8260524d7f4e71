"""What the `trainyard` commands (and `jobs/*.py`) run: an experiment, or a sweep, from YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from trainyard.experiment import build, load_spec


def run_experiment(
    config_path: str | Path,
    overrides: Sequence[str] = (),
    *,
    workers: int = 1,
    gpu: bool = False,
    name: str | None = None,
    storage_path: str | None = None,
    ship_source: Path | None = None,
    resume_from: Any = None,
    hooks: list | None = None,
) -> dict[str, Any]:
    """Build the experiment and train it: in this process (workers=0) or on Ray."""
    exp = build(load_spec(config_path, overrides))
    if not workers:
        return exp.trainer(hooks=hooks).train(exp.train_data, exp.val_data, resume_from=resume_from)
    from trainyard.execution.configs import run_config, scaling_config
    from trainyard.execution.ray_env import ensure_ray

    run = run_config(None, exp.training_config, name=name, storage_path=storage_path)  # checked before Ray starts
    ensure_ray(py_modules=[str(ship_source)] if ship_source else None)
    trainer = exp.trainer(hooks=hooks, scaling=scaling_config(workers, use_gpu=gpu), run_config=run)
    return trainer.train(exp.train_data, exp.val_data, resume_from=resume_from)


def run_sweep(
    space_path: str | Path,
    config_path: str | Path,
    overrides: Sequence[str] = (),
    *,
    num_samples: int = 10,
    max_concurrent: int | None = None,
    scheduler: str = "asha",
    workers_per_trial: int = 1,
    gpus_per_trial: float = 0,
    name: str | None = None,
    storage_path: str | None = None,
    seed: int = 0,
):
    """A Tune sweep over `space_path`, trials built from the experiment config."""
    from trainyard.hpo import load_search_space
    from trainyard.hpo.experiments import sweep_experiment

    space = load_search_space(space_path)  # validated before Ray starts
    return sweep_experiment(
        load_spec(config_path, overrides), space, num_samples=num_samples, max_concurrent=max_concurrent, scheduler=scheduler,
        resources_per_trial={"cpu": 1, "gpu": gpus_per_trial} if gpus_per_trial else None,
        workers_per_trial=workers_per_trial, storage_path=storage_path, name=name, seed=seed,
    )
