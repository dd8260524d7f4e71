"""`trainyard run`: the main job (sweep -> final training -> verified export -> report) as
one resumable command.

    result = run_pipeline("jobs/configs/addition.yaml", "tune_spaces/addition_small.yaml",
                          ["epochs=2"], samples=6, workers=2)

One run directory (`<storage>/<name>`: a local or shared path, or a URI such as
`s3://bucket/runs`) holds a folder per stage and `pipeline.json`, where each stage is
recorded when it finishes:

    sweep/    Ray Tune + Optuna (ASHA) over the space; trials.csv, best_config.yaml, plots
    final/    the best config trained to completion on `workers` Ray Train workers (DDP);
              the config's `final:` section changes its training fields (e.g. more epochs)
    export/   the export bundle, each graph checked against the model (MANIFEST.json)
    report/   report.html (images embedded) and report.md, with the plots
    lineage.json   sweep, trial, params, checkpoint, data fingerprint, code version

Run the same command again after a kill and the recorded stages are skipped: the sweep is
restored with its finished trials kept, the final training continues from its last
checkpoint (Ray Train's run-name resume). The default name is derived from the command's
inputs, so the same command finds its run; a different command gets its own. Everything is
kept in the storage, nothing in the working directory: the same command on another machine
with the same storage URI finds the run and finishes it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from trainyard._logging import get_logger, show_logs
from trainyard._trust import make_private_dir
from trainyard.engine.checkpoint import load
from trainyard.engine.results import results_as_json
from trainyard.engine.run_folder import resolve
from trainyard.engine.trainable import load_model_state
from trainyard.execution.ingest import run_inputs
from trainyard.experiment import build
from trainyard.experiment.spec import ExperimentSpec, load_spec
from trainyard.export.run import export_trained
from trainyard.hpo import load_search_space
from trainyard.hpo.experiments import sweep_experiment
from trainyard.pipeline.final import lineage, train_final
from trainyard.report import write_report
from trainyard.storage import command_digest, default_storage, downloaded, folder_name, is_local, join, read_text, staged, write_text

log = get_logger("trainyard.pipeline")
STAGES = ("sweep", "final", "export", "report")
STATE_FILE = "pipeline.json"


@dataclass
class Pipeline:
    """One run of the main job: its inputs, its directory and what its stages recorded."""

    run_dir: str  # a local path (absolute) or a URI
    spec: ExperimentSpec  # overrides applied, checked
    options: dict[str, Any]  # samples, workers, scheduler, seed, ...
    state: dict[str, Any]

    @property
    def stages(self) -> dict[str, Any]:
        return self.state.setdefault("stages", {})

    def record(self, stage: str, outcome: dict[str, Any], seconds: float) -> None:
        self.stages[stage] = {**outcome, "seconds": round(seconds, 1), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        write_json(join(self.run_dir, STATE_FILE), self.state)


def run_pipeline(
    config: str | Path,
    space: str | Path,
    overrides: Sequence[str] = (),
    *,
    samples: int = 8,
    workers: int = 2,
    gpu: bool = False,
    max_concurrent: int | None = None,
    scheduler: str = "asha",
    seed: int = 0,
    name: str | None = None,
    storage: str | Path | None = None,
    output_dir: str | Path | None = None,
) -> Pipeline:
    """Run (or finish) the main job in `<storage>/<name>`; see the module docstring. `storage`
    defaults to $TRAINYARD_STORAGE, else runs/ (`output_dir` is its older name). Returns the
    Pipeline, whose `stages` hold each stage's outcome."""
    show_logs()
    if storage is not None and output_dir is not None and str(storage) != str(output_dir):
        raise ValueError(f"storage={storage!r} and output_dir={output_dir!r}: give one (output_dir is storage's older name)")

    for label, value, low in (("samples", samples, 1), ("workers", workers, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"--{label} {value!r}: give an integer >= {low}")
    spec = load_spec(config, overrides)  # the final section too: all checked before anything starts
    search = load_search_space(space)
    options = {"samples": samples, "workers": workers, "gpu": gpu, "max_concurrent": max_concurrent, "scheduler": scheduler, "seed": seed}
    inputs = {"config": str(Path(config).resolve()), "space": str(Path(space).resolve()), "overrides": list(overrides), "spec": spec.to_dict(),
              "space_spec": search.to_dict(), **options}
    digest = command_digest(_what_counts(inputs))
    run_dir = join(storage or output_dir or default_storage(), folder_name(name) if name else f"{Path(config).stem}-{digest}")
    pipeline = _open(run_dir, inputs, digest, spec, options)
    done = [s for s in STAGES if s in pipeline.stages]
    if len(done) == len(STAGES):
        log.info("run %s finished already: its summary follows (another --name runs the command again)", run_dir)
    elif done:
        log.info("run %s: resuming; done already: %s", run_dir, ", ".join(done))
    else:
        log.info("run %s (the same command resumes it)", run_dir)
    for stage, step in zip(STAGES, (_sweep, _final, _export, _report)):
        if stage in pipeline.stages:
            continue
        started = time.perf_counter()
        outcome = step(pipeline, search)
        pipeline.record(stage, outcome, time.perf_counter() - started)
    return pipeline


def _what_counts(inputs: dict) -> dict:
    """The inputs that make a command the same command: what the config and space files say
    (resolved), not where they were. Run from another checkout, or another machine with the
    same storage, the same command finds its run."""
    return {k: v for k, v in inputs.items() if k not in ("config", "space")}


def _open(run_dir: str, inputs: dict, digest: str, spec: ExperimentSpec, options: dict) -> Pipeline:
    path = join(run_dir, STATE_FILE)
    text = read_text(path)
    if text is not None:
        try:
            state = json.loads(text)
        except ValueError as e:
            raise ValueError(f"{path} is not valid JSON ({e}): it is the run's record; restore it, or give another --name") from e
        if state.get("digest") != digest:
            counted, recorded = _what_counts(inputs), _what_counts(state.get("inputs", {}))
            changed = sorted(k for k in counted if json.dumps(counted[k], sort_keys=True, default=str) != json.dumps(recorded.get(k), sort_keys=True, default=str))
            raise ValueError(
                f"run {run_dir} was started by another command (different: {', '.join(changed) or 'inputs'}); "
                "rerun that command to finish it, or give a new --name for this one"
            )
        return Pipeline(run_dir, spec, options, state)
    if is_local(run_dir):
        make_private_dir(Path(run_dir))
    state = {"digest": digest, "inputs": inputs, "stages": {}}
    write_json(path, state)
    return Pipeline(run_dir, spec, options, state)


# -- the stages ---------------------------------------------------------------------------


def _sweep(pipeline: Pipeline, search: Any) -> dict[str, Any]:
    options = pipeline.options
    result = sweep_experiment(
        pipeline.spec, search, num_samples=options["samples"], max_concurrent=options["max_concurrent"], scheduler=options["scheduler"],
        resources_per_trial={"cpu": 1, "gpu": 1} if options["gpu"] else None,
        storage_path=pipeline.run_dir, name="sweep", seed=options["seed"], log_epochs=False,
    )
    counts = result.dataframe["state"].value_counts().to_dict()
    return {
        "path": result.path, "metric": result.metric, "mode": result.mode, "value": result.best_metrics.get(result.metric),
        "best_trial": result.best_trial, "best_trial_number": int(result.dataframe.set_index("trial").loc[result.best_trial, "number"]),
        "best_params": result.best_params, "checkpoint": result.best_checkpoint,
        "trials": {str(k): int(v) for k, v in counts.items()}, "data_fingerprint": result.data_fingerprint,
    }


def best_spec(pipeline: Pipeline, search: Any) -> ExperimentSpec:
    """The spec the final training runs: the winner's values, then the `final` changes, and
    a `source` section naming the sweep trial it came from."""
    sweep = pipeline.stages["sweep"]
    return pipeline.spec.with_params(sweep["best_params"]).final_training().with_source({
        "sweep": Path(sweep["path"]).name, "sweep_path": sweep["path"], "trial_id": sweep["best_trial"],
        "params": sweep["best_params"], "metric": sweep["metric"], "value": sweep["value"],
        "checkpoint": sweep["checkpoint"], "data_fingerprint": sweep["data_fingerprint"],
    })


def _final(pipeline: Pipeline, search: Any) -> dict[str, Any]:
    options = pipeline.options
    job = train_final(best_spec(pipeline, search), workers=options["workers"], use_gpu=options["gpu"], output_dir=pipeline.run_dir, name="final")
    write_json(join(pipeline.run_dir, "lineage.json"), {"run": pipeline.run_dir, **lineage(job)})
    return results_as_json(job.results)  # run_dir, checkpoint_path, metrics_summary, histories, telemetry, ...


def _export(pipeline: Pipeline, search: Any) -> dict[str, Any]:
    """Export the final checkpoint's model (loaded here, so that a rerun after a kill
    exports the same weights) and record each graph's parity."""
    final = pipeline.stages["final"]
    exp = build(best_spec(pipeline, search))
    model = exp.model_factory()
    with downloaded(final["checkpoint_path"]) as checkpoint:
        load_model_state(model, load(resolve(checkpoint)))
    trainer = exp.trainer()
    trainer.model = model
    # files read by Ray Data: the bundle's parity samples come from its blocks
    sample_data, _ = run_inputs(exp.val_data if exp.val_data is not None else exp.train_data, None, exp.model_config, exp.task_spec, on_ray=False)
    where = join(pipeline.run_dir, "export")
    with staged(where) as out:  # on object storage: uploaded whole once every graph is checked
        bundle = export_trained(trainer, sample_data, out, final["task"])
        manifest = json.loads((bundle / "MANIFEST.json").read_text())
    return {"path": where, "formats": list(manifest["parity"]), "parity": manifest["parity"]}


def _report(pipeline: Pipeline, search: Any) -> dict[str, Any]:
    html = write_report(pipeline.run_dir)
    return {"html": html, "markdown": html.rsplit(".", 1)[0] + ".md"}


# -- what the command prints at the end ----------------------------------------------------


def summary(pipeline: Pipeline) -> list[str]:
    """The closing block: best params, final metrics, stage times, export parity, report."""
    stages = pipeline.stages
    sweep, final, export, report = (stages.get(s, {}) for s in STAGES)
    last = (final.get("metrics_summary") or [{}])[-1]
    lines = [f"run {pipeline.run_dir}"]
    trials = ", ".join(f"{v} {k.lower()}" for k, v in sorted((sweep.get("trials") or {}).items()))
    total = sum((sweep.get("trials") or {}).values())
    lines.append(f"  sweep     best {sweep.get('metric')} {_fmt(sweep.get('value'))} from trial {sweep.get('best_trial_number')} ({total} trials: {trials})")
    lines.append("  best      " + " ".join(f"{k}={_fmt(v)}" for k, v in (sweep.get("best_params") or {}).items()))
    metrics = [("val/exact_match", "exact-match", True), ("val/accuracy", "accuracy", True), ("val/loss", "val loss", False)]
    shown = [f"{label} {100 * last[key]:.1f}%" if pct else f"{label} {last[key]:.4f}" for key, label, pct in metrics if last.get(key) is not None]
    lines.append(f"  final     {', '.join(shown) or 'final_loss ' + _fmt(final.get('final_loss'))} after {last.get('epoch', '?')} epochs on {pipeline.options['workers']} workers")
    parity = export.get("parity") or {}
    lines.append("  export    " + ", ".join(f"{fmt} max|err| {p['max_abs_error']:.1e}" for fmt, p in parity.items()) + f" (<= {_tolerance(parity)})")
    lines.append("  stages    " + ", ".join(f"{s} {stages[s]['seconds']:.0f}s" for s in STAGES if s in stages))
    lines.append(f"  report    {report.get('html')}")
    lines.append(f"  bundle    {export.get('path')}")
    return lines


def _tolerance(parity: dict) -> str:
    values = {p["tolerance"] for p in parity.values()}
    return ", ".join(f"{v:g}" for v in sorted(values)) or "-"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_json(location: str, data: Any) -> None:
    """Write JSON so that a kill leaves the old file or the new one, never half of one."""
    write_text(location, json.dumps(data, indent=1, default=str))
