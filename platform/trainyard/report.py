"""`trainyard report RUN_DIR`: one self-contained `report.html` (images embedded) and a
`report.md` beside its PNG plots, in `RUN_DIR/report/`.

RUN_DIR is what a command left: a `trainyard run` directory (`pipeline.json`: sweep, final
training, export, lineage), a `trainyard train` run directory (`results.json`) or a
`trainyard tune` sweep directory (`trials.csv` and its plots). Each section is drawn from
what is there; a section with no data is left out, never drawn empty.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainyard._logging import get_logger
from trainyard.storage import downloaded, exists, is_uri, join, staged

log = get_logger("trainyard.report")
SWEEP_PLOTS = {  # file in the sweep directory -> caption
    "optimization_history.png": "Optimisation history: each trial's result, and the best so far",
    "trial_curves.png": "Per-trial curves: pruned trials end where the scheduler cut them",
    "param_importances.png": "Parameter importances",
    "parallel_coordinates.png": "Parallel coordinates: every trial's parameters and result",
}


@dataclass
class Section:
    title: str
    text: list[str] = field(default_factory=list)  # paragraphs (plain text)
    tables: list[tuple[list[str], list[list[Any]]]] = field(default_factory=list)  # (header, rows)
    images: list[tuple[str, str]] = field(default_factory=list)  # (file name in report/, caption)


# What a report is drawn from: these files, in the run's folder or one folder down (sweep/,
# export/). A run in object storage has only these downloaded, not its checkpoints.
_INPUTS = {"pipeline.json", "lineage.json", "results.json", "trials.csv", "MANIFEST.json", *SWEEP_PLOTS}


def write_report(run_dir: str | Path) -> str:
    """Write RUN_DIR/report/{report.html, report.md, *.png}; returns report.html's location.
    RUN_DIR is a local path or a URI (`s3://bucket/runs/x`: the report is uploaded beside it)."""
    if is_uri(run_dir):
        run = os.fspath(run_dir).rstrip("/")
        if not exists(run):
            raise FileNotFoundError(f"{run}: no run is there: give the run location a trainyard command printed")
        with downloaded(run, keep=lambda rel: rel.split("/")[-1] in _INPUTS and rel.count("/") <= 1) as local, staged(join(run, "report")) as out:
            _write(local, out, run)
        return join(run, "report", "report.html")
    local = Path(run_dir).expanduser().resolve()
    if not local.is_dir():
        raise FileNotFoundError(f"{local} is not a directory: give the run directory a trainyard command printed")
    out = local / "report"
    out.mkdir(exist_ok=True)
    _write(local, out, str(local))
    return str(out / "report.html")


def _write(run_dir: Path, out: Path, shown: str) -> None:
    """The report of the run whose files are in `run_dir` (`shown`: its location, as the report
    names it), written into `out`."""
    started = time.perf_counter()
    title, sections = _sections(run_dir, out, shown)
    if not sections:
        raise FileNotFoundError(
            f"{shown} holds nothing to report: expected pipeline.json (trainyard run), results.json (trainyard train) "
            "or trials.csv (trainyard tune)"
        )
    for section in sections:  # the report is a stage of the run too: its own time, as far as drawing it took
        if section.title == "Stages" and "report" not in [row[0] for row in section.tables[0][1]]:
            section.tables[0][1].append(["report", f"{time.perf_counter() - started:.1f}", "(this report)"])
    (out / "report.md").write_text(_markdown(title, shown, sections))
    (out / "report.html").write_text(_html(title, shown, sections, out))


def _here(recorded: str, shown: str, run_dir: Path) -> Path:
    """A folder a run recorded (its sweep's, its export's) where this report reads it: inside a
    downloaded run, its copy there."""
    if is_uri(recorded) and recorded.rstrip("/").startswith(shown + "/"):
        return run_dir / recorded.rstrip("/")[len(shown) + 1 :]
    return Path(recorded)


def _sections(run_dir: Path, out: Path, shown: str) -> tuple[str, list[Section]]:
    name = shown.rstrip("/").rsplit("/", 1)[-1]

    def here(recorded: str) -> Path:
        return _here(recorded, shown, run_dir)

    if (run_dir / "pipeline.json").is_file():
        state = json.loads((run_dir / "pipeline.json").read_text())
        stages = state.get("stages", {})
        sections = []
        if "sweep" in stages:
            sections.append(_sweep_section(here(stages["sweep"]["path"]), out, stages["sweep"], stages["sweep"]["path"]))
        if "final" in stages:
            sections += _training_sections(stages["final"], out, "Final training")
        if "export" in stages:
            sections.append(_export_section(stages["export"]))
        sections.append(_stages_section(stages))
        if (run_dir / "lineage.json").is_file():
            sections.append(_lineage_section(json.loads((run_dir / "lineage.json").read_text())))
        return f"trainyard run {name}", sections
    if (run_dir / "results.json").is_file():
        results = json.loads((run_dir / "results.json").read_text())
        sections = _training_sections(results, out, "Training")
        if results.get("export_path") and (here(results["export_path"]) / "MANIFEST.json").is_file():
            manifest = json.loads((here(results["export_path"]) / "MANIFEST.json").read_text())
            sections.append(_export_section({"path": results["export_path"], "parity": manifest.get("parity", {})}))
        return f"trainyard train {name}", sections
    if (run_dir / "trials.csv").is_file():
        return f"trainyard tune {name}", [_sweep_section(run_dir, out, None, shown)]
    return "", []


# -- sections -------------------------------------------------------------------------------


def _sweep_section(sweep_dir: Path, out: Path, outcome: dict | None, shown: str | None) -> Section:
    import pandas as pd

    section = Section("Sweep")
    trials = pd.read_csv(sweep_dir / "trials.csv") if (sweep_dir / "trials.csv").is_file() else None
    if outcome:
        section.text.append(
            f"Best {outcome['metric']} ({outcome['mode']}): {_fmt(outcome['value'])}, trial {outcome.get('best_trial_number', outcome['best_trial'])}. "
            f"Trials: {', '.join(f'{v} {k.lower()}' for k, v in sorted(outcome['trials'].items()))}."
        )
        section.tables.append((["parameter", "best value"], [[k, _fmt(v)] for k, v in outcome["best_params"].items()]))
    if trials is not None and len(trials):
        metric = outcome["metric"] if outcome else next((c for c in trials.columns if c.startswith("val/")), None)
        # the number, state, parameters and epochs of each trial, then its result and time
        keep = [c for c in trials.columns if c not in ("trial", "error", "time_total_s") and "/" not in c]
        keep += [c for c in (metric, "time_total_s") if c in trials.columns]
        rows = trials.sort_values("number")[keep].values.tolist() if "number" in trials else trials[keep].values.tolist()
        header = ["trial" if c == "number" else "seconds" if c == "time_total_s" else c for c in keep]
        section.tables.append((header, [[_fmt(v) for v in row] for row in rows]))
    for name, caption in SWEEP_PLOTS.items():
        if (sweep_dir / name).is_file():
            shutil.copyfile(sweep_dir / name, out / f"sweep_{name}")
            section.images.append((f"sweep_{name}", caption))
    section.text.append(f"Sweep directory: {shown or sweep_dir}")
    return section


def _training_sections(results: dict, out: Path, title: str) -> list[Section]:
    summary = results.get("metrics_summary") or []
    last = summary[-1] if summary else {}
    metrics = Section(f"{title}: metrics")
    if last:
        metrics.tables.append((["metric", "last epoch"], [[k, _fmt(v)] for k, v in last.items() if v is not None]))
    metrics.text.append(
        f"final_loss {_fmt(results.get('final_loss'))}, best epoch {results.get('best_epoch')}, "
        f"{results.get('global_step')} optimizer steps in {_fmt(results.get('training_time'))} s; checkpoint "
        f"{results.get('checkpoint_path')}"
    )
    curves = Section(f"{title}: curves")
    for name, caption, draw in _TRAINING_PLOTS:
        try:
            drawn = draw(results, out / name)
        except Exception as e:  # noqa: BLE001 - one plot that cannot be drawn is said, and the rest drawn
            log.warning("no %s: %s", name, e)
            continue
        if drawn:
            curves.images.append((name, caption))
    return [metrics, curves] if curves.images else [metrics]


def _export_section(export: dict) -> Section:
    section = Section("Export parity")
    rows = [[fmt, f"{p['max_abs_error']:.2e}", f"{p['tolerance']:g}", " ".join("x".join(map(str, s)) for s in p["inputs"])]
            for fmt, p in (export.get("parity") or {}).items()]
    section.tables.append((["format", "max abs logit error", "tolerance", "inputs (batch x length)"], rows))
    section.text.append(f"Bundle: {export.get('path')}. Each graph was loaded back and compared with the trained model.")
    return section


def _stages_section(stages: dict) -> Section:
    rows = [[name, f"{s.get('seconds', 0):.1f}", s.get("finished_at", "")] for name, s in stages.items()]
    return Section("Stages", tables=[(["stage", "seconds", "finished"], rows)])


def _lineage_section(lineage: dict) -> Section:
    def value(v: Any) -> str:  # a mapping as `key: value` lines, wrapped in the page (not one long JSON line)
        return "\n".join(f"{k}: {_fmt(x)}" for k, x in v.items()) if isinstance(v, dict) else json.dumps(v) if isinstance(v, list) else _fmt(v)

    rows = [[k, value(v)] for k, v in lineage.items()]
    return Section("Lineage", tables=[(["field", "value"], rows)])


# -- training plots --------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _epoch_steps(results: dict) -> list[float]:
    """The optimizer step at which each epoch ended (for per-epoch points on a step axis)."""
    summary = results.get("metrics_summary") or []
    steps = results.get("global_step") or len(results.get("loss_history") or [])
    return [steps * (i + 1) / len(summary) for i in range(len(summary))]


def _series(results: dict, key: str) -> list[float | None]:
    return [_finite(row.get(key)) for row in results.get("metrics_summary") or []]


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _save(figure, path: Path) -> bool:
    figure.savefig(path, dpi=110, bbox_inches="tight")
    _pyplot().close(figure)
    return True


def _loss_plot(results: dict, path: Path) -> bool:
    steps = results.get("loss_history") or []
    val = _series(results, "val/loss")
    train = _series(results, "train/loss")
    if not steps and not any(v is not None for v in val + train):
        return False
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(7, 4))
    if steps:
        ax.plot(range(1, len(steps) + 1), steps, color="#1f77b4", alpha=0.35, linewidth=0.8, label="train loss (each step)")
    at = _epoch_steps(results)
    for values, colour, label in ((train, "#1f77b4", "train loss (epoch mean)"), (val, "#d62728", "validation loss (epoch end)")):
        points = [(x, v) for x, v in zip(at, values) if v is not None]
        if points:
            ax.plot(*zip(*points), marker="o", color=colour, label=label)
    ax.set(xlabel="optimizer step", ylabel="loss (cross-entropy)", title="Loss")
    if steps and min(steps) > 0 and max(steps) / min(steps) > 20:
        ax.set_yscale("log")
        ax.set_ylabel("loss (cross-entropy, log scale)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(figure, path)


def _accuracy_plot(results: dict, path: Path) -> bool:
    keys = [(k, label) for k, label in (("train/accuracy", "train token accuracy"), ("val/accuracy", "validation token accuracy"),
                                        ("train/exact_match", "train exact match"), ("val/exact_match", "validation exact match"))
            if any(v is not None for v in _series(results, k))]
    colours = {"accuracy": "#1f77b4", "exact_match": "#d62728"}  # one colour a measure; train dashed, validation solid
    if not keys:
        return False
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(7, 4))
    epochs = [row.get("epoch") for row in results["metrics_summary"]]
    for key, label in keys:
        points = [(e, 100 * v) for e, v in zip(epochs, _series(results, key)) if v is not None]
        train = key.startswith("train")
        ax.plot(*zip(*points), marker="o", linestyle="--" if train else "-", color=colours[key.split("/")[1]],
                markerfacecolor="white" if train else None, label=label)
    ax.set(xlabel="epoch", ylabel="percent", title="Accuracy and exact match", ylim=(0, 100))
    _epoch_ticks(ax, epochs)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(figure, path)


def _epoch_ticks(ax: Any, epochs: list[Any]) -> None:
    """Whole epochs on the x axis: each one where there are few (one epoch drew ticks at
    0.96 ... 1.04), else whole numbers only."""
    shown = sorted({e for e in epochs if e is not None})
    if len(shown) <= 12:
        ax.set_xticks(shown)
    else:
        ax.xaxis.get_major_locator().set_params(integer=True)


def _per_epoch_plot(key: str, title: str, ylabel: str, scale: float = 1.0):
    def draw(results: dict, path: Path) -> bool:
        epochs = [row.get("epoch") for row in results.get("metrics_summary") or []]
        points = [(e, scale * v) for e, v in zip(epochs, _series(results, key)) if v is not None]
        if not points:
            return False
        plt = _pyplot()
        figure, ax = plt.subplots(figsize=(7, 3.5))
        ax.plot(*zip(*points), marker="o")
        ax.set(xlabel="epoch", ylabel=ylabel, title=title)
        ax.set_ylim(bottom=0)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
        _epoch_ticks(ax, epochs)
        ax.grid(alpha=0.3)
        return _save(figure, path)

    return draw


def _learning_rate_plot(results: dict, path: Path) -> bool:
    """Per optimizer step, so that a warmup of a few steps shows (runs of older versions kept
    one rate per epoch: those points)."""
    rates = results.get("learning_rate_history") or []
    if not rates:
        return _per_epoch_plot("train/learning_rate", "Learning rate", "learning rate")(results, path)
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(range(1, len(rates) + 1), rates, linewidth=1.2)
    ax.set(xlabel="optimizer step", ylabel="learning rate", title="Learning rate")
    ax.set_ylim(bottom=0)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
    ax.grid(alpha=0.3)
    return _save(figure, path)


def _grad_norm_plot(results: dict, path: Path) -> bool:
    norms = [v for v in results.get("grad_norm_history") or [] if _finite(v) is not None]
    if not norms:
        return False
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(range(1, len(norms) + 1), norms, linewidth=0.8)
    ax.set(xlabel="optimizer step", ylabel="gradient norm (before clipping)", title="Gradient norm")
    if min(norms) > 0 and max(norms) / min(norms) > 20:
        ax.set_yscale("log")
        ax.set_ylabel("gradient norm (before clipping, log scale)")
    ax.grid(alpha=0.3)
    return _save(figure, path)


_TRAINING_PLOTS = (
    ("loss.png", "Loss per optimizer step, with each epoch's train and validation loss", _loss_plot),
    ("accuracy.png", "Token accuracy and exact match per epoch", _accuracy_plot),
    ("learning_rate.png", "Learning rate per optimizer step (warmup, then the schedule)", _learning_rate_plot),
    ("grad_norm.png", "Gradient norm per optimizer step (before clipping)", _grad_norm_plot),
    ("throughput.png", "Training throughput per epoch (tokens per second, all workers)",
     _per_epoch_plot("throughput/tokens_per_s", "Throughput", "thousand tokens / s", 1e-3)),
)


# -- writers -----------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _markdown(title: str, run_dir: str, sections: list[Section]) -> str:
    lines = [f"# {title}", "", f"Run directory: `{run_dir}`. Written {time.strftime('%Y-%m-%d %H:%M')}.", ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        lines += [p for t in s.text for p in (t, "")]
        for header, rows in s.tables:
            lines.append("| " + " | ".join(map(str, header)) + " |")
            lines.append("|" + "---|" * len(header))
            lines += ["| " + " | ".join(_fmt(v).replace("|", "\\|").replace("\n", "<br>") for v in row) + " |" for row in rows]
            lines.append("")
        lines += [line for name, caption in s.images for line in (f"![{caption}]({name})", f"*{caption}*", "")]
    return "\n".join(lines)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1180px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em;max-width:100%}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;overflow-wrap:anywhere;white-space:pre-line}
th{background:#f3f3f3}figure{margin:0}img{max-width:100%}figcaption{color:#555;font-size:.9em}
.wide{overflow-x:auto}.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(440px,1fr));gap:1.2em;margin:1em 0}"""


def _html(title: str, run_dir: str, sections: list[Section], out: Path) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{e(title)}</h1><p>Run directory: <code>{e(str(run_dir))}</code>. Written {time.strftime('%Y-%m-%d %H:%M')}.</p>"]
    for s in sections:
        parts.append(f"<h2>{e(s.title)}</h2>")
        parts += [f"<p>{e(t)}</p>" for t in s.text]
        for header, rows in s.tables:
            parts.append("<div class='wide'><table><tr>" + "".join(f"<th>{e(str(h))}</th>" for h in header) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{e(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows]
            parts.append("</table></div>")
        if s.images:
            parts.append("<div class='plots'>")
            for name, caption in s.images:
                data = base64.b64encode((out / name).read_bytes()).decode()
                parts.append(f"<figure><img alt='{e(caption)}' src='data:image/png;base64,{data}'><figcaption>{e(caption)}</figcaption></figure>")
            parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)
