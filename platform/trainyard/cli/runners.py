"""What the `trainyard` commands (and `jobs/*.py`) run: an experiment, or a sweep, from YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from trainyard.engine.run_folder import latest_valid
from trainyard.engine.setup import run_id
from trainyard.experiment import build, load_spec
from trainyard.storage import command_digest, default_storage, folder_name, is_uri, join


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
    fresh: bool = False,
    hooks: list | None = None,
) -> dict[str, Any]:
    """Build the experiment and train it: in this process (workers=0) or on Ray, in the run
    folder `<storage>/<name>` either way (the spec's `checkpoint_dir` instead, in-process).
    The default name is `command_run_name`'s: running the same command again resumes its
    run from the newest checkpoint there; `fresh` starts a new run, under a new name."""
    spec = load_spec(config_path, overrides)
    name = name or (f"{Path(config_path).stem}-{run_id()}" if fresh else command_run_name(config_path, spec, workers))
    exp = build(spec)
    if not workers:
        run_dir = run_folder(spec, name, workers, storage_path)
        if resume_from is None and not fresh and latest_valid(run_dir) is not None:
            resume_from = run_dir  # its newest valid checkpoint; the loop says which
        training_config = exp.training_config.replace(checkpoint_dir=str(run_dir))
        return exp.trainer(training_config, hooks=hooks).train(exp.train_data, exp.val_data, resume_from=resume_from)
    from trainyard.execution.configs import run_config, scaling_config
    from trainyard.execution.launch import check_before_ray
    from trainyard.execution.ray_env import ensure_ray

    run = run_config(None, exp.training_config, name=name, storage_path=storage_path)  # checked before Ray starts
    check_before_ray(resume_from)
    ensure_ray(py_modules=[str(ship_source)] if ship_source else None)
    trainer = exp.trainer(hooks=hooks, scaling=scaling_config(workers, use_gpu=gpu), run_config=run)
    return trainer.train(exp.train_data, exp.val_data, resume_from=resume_from)


def run_folder(spec: Any, name: str, workers: int, storage_path: str | None = None) -> str:
    """Where a `train` command's run keeps its checkpoints: in this process (workers=0) the
    spec's `checkpoint_dir` if it has one, else `<storage>/<name>` (on Ray too; a URI there).
    An in-process run writes to local disk: a URI storage is refused for it, saying what works."""
    if spec.training.checkpoint_dir and not workers:
        return str(Path(spec.training.checkpoint_dir).resolve())
    storage = storage_path or default_storage()
    if is_uri(storage) and not workers:
        raise ValueError(
            f"storage {storage}: a run in this process writes its checkpoints to local disk; train on Ray workers "
            "(--workers N), which write to that storage, or give a local or shared-filesystem path"
        )
    return join(storage, folder_name(name))


def command_run_name(config_path: str | Path, spec: Any, workers: int) -> str:
    """`<config file's stem>-<8 hex>`, from the config as resolved (overrides applied; not the
    file's place: the same command from another checkout or machine names the same run) and the
    worker count (it sets the global batch): the same command names the same run. How long to
    train (`epochs`, `early_stopping_patience`) is left out: raising it trains the run further."""
    resolved = spec.to_dict()
    training = {k: v for k, v in (resolved.get("training") or {}).items() if k not in ("epochs", "early_stopping_patience")}
    # what the file says, not where it is; the workers where they set the global batch (with a
    # global_batch_size they only split it: another count is the same run, resumed)
    inputs = {"spec": {**resolved, "training": training}, "workers": None if spec.training.global_batch_size else workers}
    return f"{Path(config_path).stem}-{command_digest(inputs)}"


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
