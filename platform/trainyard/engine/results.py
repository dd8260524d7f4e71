"""The results dict a run returns (the same shape in-process and on Ray)."""

from __future__ import annotations

import json
import math
from typing import Any

from trainyard.engine.metrics import exp_or_inf
from trainyard.engine.state import Run, TrainState
from trainyard.engine.telemetry import run_summary

_SUMMARY_BASE = ["epoch", "train/loss", "val/loss", "train/accuracy", "val/accuracy", "train/perplexity", "val/perplexity", "train/learning_rate"]


def build_results(run: Run, state: TrainState, elapsed: float, stop_reason: str | None) -> dict[str, Any]:
    """Keys (always present): loss_history, final_loss (validation loss when there is
    validation data), final_perplexity, training_time, metrics_summary, best_epoch,
    grad_norm_history, amp_enabled, checkpoint_path; also learning_rate_history (per
    optimizer step), run_dir, task, global_step,
    stopped_early, eval_history (a row per evaluation: epoch, global_step, val/*), telemetry
    (the run's throughput, step time, data wait, MFU, memory)."""
    import pandas as pd

    history = run.progress.history
    rows = history["epochs"]
    summary = pd.DataFrame(rows, columns=_summary_columns(rows))
    key = "val/loss" if run.val_ds is not None else "train/loss"
    if rows:
        final_loss = rows[-1][key]
        losses = [r[key] for r in rows]
        best_epoch = rows[min(range(len(rows)), key=lambda i: (math.isnan(losses[i]), losses[i]))]["epoch"]
    else:  # stopped before the first epoch ended
        sums = run.progress.epoch_sums.reduced(run.ctx)
        final_loss = sums.loss / sums.count if sums.count else float("nan")
        best_epoch = 0
    return {
        "loss_history": list(history["loss"]),
        "final_loss": float(final_loss),
        "final_perplexity": exp_or_inf(final_loss),
        "training_time": elapsed,
        "metrics_summary": summary,
        "best_epoch": int(best_epoch),
        "grad_norm_history": list(history["grad_norm"]),
        "learning_rate_history": list(history["learning_rate"]),
        "amp_enabled": run.amp_dtype is not None,
        "checkpoint_path": str(run.progress.last_checkpoint) if run.progress.last_checkpoint else None,
        "run_dir": str(run.run_dir),
        "task": run.task.name,
        "global_step": state.global_step,
        "stopped_early": stop_reason,
        "eval_history": list(history["evals"]),
        "telemetry": run_summary(rows),
    }


def results_as_json(results: dict[str, Any]) -> dict[str, Any]:
    """The results dict as JSON data: metrics_summary as one record per epoch (NaN as null)."""
    out = dict(results)
    summary = out.get("metrics_summary")
    if hasattr(summary, "to_json"):
        out["metrics_summary"] = json.loads(summary.to_json(orient="records"))
    return out


def _summary_columns(rows: list[dict]) -> list[str]:
    extra = [k for r in rows for k in r if k not in _SUMMARY_BASE]
    return _SUMMARY_BASE + list(dict.fromkeys(extra))
