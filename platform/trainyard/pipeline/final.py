"""The final training of a sweep's best config, as a Ray Train run, and its lineage.

    job = train_final(best_spec, dataset, workers=2)
    record = lineage(job)        # sweep, trial, params, checkpoint, data, code

The lineage is also written as `lineage.json` in the run directory, so `lineage(run_dir)`
gives it back later from disk. (Seed 004 calls these `execute_final_training` and
`extract_lineage_from_best_model`: trainyard.compat.final.)
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from trainyard._logging import get_logger
from trainyard.data.fingerprint import fingerprint
from trainyard.execution.configs import run_config, scaling_config
from trainyard.execution.remote import run_name
from trainyard.experiment import build
from trainyard.storage import join, read_text, write_text

log = get_logger("trainyard.pipeline")
LINEAGE_FILE = "lineage.json"


@dataclass
class FinalTrainingJob:
    name: str
    run_dir: str  # Ray Train's run directory under the storage path
    results: dict[str, Any]  # the engine's results dict (rank 0)
    checkpoint_path: str | None  # the final checkpoint, persisted by Ray
    config: dict[str, Any]  # the experiment spec that was trained
    data_fingerprint: str | None
    code_version: dict[str, Any]
    finished_at: str
    model: Any = None  # the trained model, weights loaded on this process


def train_final(
    best_spec: Any,
    dataset: Any = None,
    *,
    workers: int = 2,
    use_gpu: bool = False,
    output_dir: str | Path | None = None,
    name: str | None = None,
) -> FinalTrainingJob:
    """Train `best_spec` (an ExperimentSpec, or its sections as a dict, e.g. a sweep's best)
    in `workers` Ray Train workers with DDP, in `<output_dir>/<name>` (a path or a URI; default
    $TRAINYARD_STORAGE, else runs/). Rerunning with the same `name` and `output_dir` resumes
    that run from its last checkpoint."""
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers={workers!r} must be an integer >= 1")
    exp = build(best_spec, dataset)
    source = exp.spec.source
    name = name or run_name(f"final-{source.get('sweep') or 'run'}")
    trainer = exp.trainer(
        scaling=scaling_config(workers, use_gpu=use_gpu),
        run_config=run_config(None, exp.training_config, name=name, storage_path=str(output_dir) if output_dir is not None else None),
    )
    results = trainer.train(exp.train_data, exp.val_data)
    job = FinalTrainingJob(
        name=name,
        run_dir=results["run_dir"],
        results=results,
        checkpoint_path=results["checkpoint_path"],
        config=exp.spec.to_dict(),
        data_fingerprint=fingerprint((exp.train_data, exp.val_data)),
        code_version=code_version(),
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        model=trainer.model,
    )
    write_text(join(job.run_dir, LINEAGE_FILE), json.dumps(lineage(job), indent=2, default=str))
    log.info("final training done (run %s): checkpoint %s", name, job.checkpoint_path)
    return job


def lineage(job: FinalTrainingJob | str | os.PathLike) -> dict[str, Any]:
    """Where the final model came from: the sweep, trial and parameters that chose its
    config, its checkpoint, the fingerprint of the data it was trained on (and of the
    sweep's data), and the code version. `job` is a FinalTrainingJob or its run directory."""
    if isinstance(job, (str, os.PathLike)):
        text = read_text(join(job, LINEAGE_FILE))
        if text is None:
            raise FileNotFoundError(f"{join(job, LINEAGE_FILE)} not found: pass the run_dir of a final training (or its job)")
        return json.loads(text)
    if not isinstance(job, FinalTrainingJob):
        raise TypeError(f"job must be a FinalTrainingJob or its run directory, got {type(job).__name__}")
    source = job.config.get("source") or {}
    return {
        "sweep": source.get("sweep"),
        "sweep_path": source.get("sweep_path"),
        "trial_id": source.get("trial_id"),
        "params": source.get("params") or {},
        "metric": source.get("metric"),
        "sweep_value": source.get("value"),
        "sweep_checkpoint": source.get("checkpoint"),
        "sweep_data_fingerprint": source.get("data_fingerprint"),
        "run_name": job.name,
        "run_dir": job.run_dir,
        "checkpoint": job.checkpoint_path,
        "data_fingerprint": job.data_fingerprint,
        "code_version": job.code_version,
        "final_loss": job.results.get("final_loss"),
        "finished_at": job.finished_at,
    }


def code_version(directory: str | os.PathLike | None = None) -> dict[str, Any]:
    """The git commit of `directory` (default: the working directory: the user's project)
    and whether it had uncommitted changes to tracked files; the installed trainyard
    version, and its commit when it runs from a git checkout."""
    try:
        version = metadata.version("trainyard")
    except metadata.PackageNotFoundError:
        version = None
    where = str(directory or Path.cwd())
    commit = _git(where, "rev-parse", "HEAD")
    dirty = None if commit is None else bool(_git(where, "status", "--porcelain", "--untracked-files=no"))
    return {"git_commit": commit, "git_dirty": dirty, "trainyard": version,
            "trainyard_commit": _git(str(Path(__file__).resolve().parent), "rev-parse", "HEAD")}


def _git(directory: str, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", directory, *args], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None
