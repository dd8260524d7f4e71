"""What a finished sweep leaves in its directory: best_config.yaml, trials.csv and plots."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from trainyard._logging import get_logger
from trainyard.storage import join, staged, write_text

log = get_logger("trainyard.hpo")

PLOTS = ("optimization_history.png", "trial_curves.png", "param_importances.png", "parallel_coordinates.png")
STATE_STYLE = {  # state -> (colour, marker)
    "COMPLETE": ("#1f77b4", "o"),
    "PRUNED": ("#ff7f0e", "x"),
    "FAIL": ("#d62728", "v"),
}
FEW_TRIALS = 8  # parameter importances from fewer complete trials than this are a rough guide


def write_outputs(result: Any) -> None:
    """Best config as YAML, every trial as CSV, and the plots, in the sweep's folder (uploaded
    there where it is in object storage)."""
    with staged(result.path) as out:
        result.best_config.to_yaml(out / "best_config.yaml")
        result.dataframe.to_csv(out / "trials.csv", index=False)
        result.plots = [join(result.path, Path(plot).name) for plot in _plots(result, out)]


def write_best_experiment(result: Any, spec: Any) -> None:
    """`best_config.yaml` in the sweep directory: the experiment config the sweep started
    from (`spec`: model, data and training sections) with the winning values filled in, so
    that `trainyard train <sweep>/best_config.yaml` trains the winner as it is."""
    best = spec.with_params(result.best_params).to_dict()
    header = (f"# The best trial ({result.best_trial}) of the sweep in {result.path}: {result.metric} = "
              f"{result.best_metrics.get(result.metric)!r}.\n# Train it: trainyard train {join(result.path, 'best_config.yaml')}\n")
    write_text(join(result.path, "best_config.yaml"), header + yaml.safe_dump(best, sort_keys=False))


def trial_number(experiment_tag: str | None, fallback: int) -> int:
    """A trial's number, 1-based, in the order the searcher created the trials: the one the
    console, trials.csv, the plots and the report all show. Tune's experiment tag (in a
    trial's results and its folder name) starts with it: '3_batch_size=32,...'."""
    head = str(experiment_tag or "").split("_", 1)[0]
    return int(head) if head.isdigit() else fallback


def _plots(result: Any, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = _trials(result)
    written = []
    for filename, draw in zip(PLOTS, (_history, _curves, _importances, _parallel)):
        try:
            figure = draw(plt, trials, result)
        except Exception as e:  # noqa: BLE001 - a plot that cannot be drawn is left out, and said
            log.warning("no %s: %s", filename, e)
            continue
        if figure is None:
            continue
        figure.savefig(out / filename, dpi=110, bbox_inches="tight")
        plt.close(figure)
        written.append(str(out / filename))
    return written


def _trials(result: Any) -> list[dict]:
    """One dict per trial: number, state, value, history {epoch: value}, params."""
    rows = []
    for i, (trial, row) in enumerate(zip(result.study.trials, result.dataframe.to_dict("records"))):
        history = dict(sorted(trial.intermediate_values.items()))
        value = row.get(result.metric)
        rows.append({
            "number": row.get("number", i + 1), "state": row["state"], "params": trial.params, "history": history,
            "value": float(value) if value is not None and value == value else None,
        })
    return sorted(rows, key=lambda r: r["number"])


def _sweep_name(result: Any) -> str:
    """The sweep's folder name; `trainyard run`'s sweeps are all `sweep/`, named by their run."""
    parent, _, name = result.path.rstrip("/").rpartition("/")
    return f"of {parent.rpartition('/')[2]}" if name == "sweep" else name


def _label(result: Any) -> str:
    return f"{result.metric} ({'lower' if result.mode == 'min' else 'higher'} is better)"


def _legend_states(ax, trials) -> None:
    from matplotlib.lines import Line2D

    counts = {state: sum(t["state"] == state for t in trials) for state in STATE_STYLE}
    handles = [Line2D([], [], color=c, marker=m, linestyle="", label=f"{state.lower()} ({counts[state]})")
               for state, (c, m) in STATE_STYLE.items() if counts[state]]
    return handles


def _history(plt, trials, result):
    """Every trial's last reported value by trial number, coloured by state, and the best so far."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    better = min if result.mode == "min" else max
    best, best_line = None, []
    for t in trials:
        colour, marker = STATE_STYLE[t["state"]]
        if t["value"] is not None:
            ax.scatter(t["number"], t["value"], color=colour, marker=marker, s=45, zorder=3)
        if t["state"] == "COMPLETE" and t["value"] is not None:
            best = t["value"] if best is None else better(best, t["value"])
        best_line.append((t["number"], best))
    xs = [n for n, b in best_line if b is not None]
    if xs:
        ax.step(xs, [b for _, b in best_line if b is not None], where="post", color="#2ca02c", label="best complete so far")
    failed = [t["number"] for t in trials if t["value"] is None]
    for n in failed:
        ax.axvline(n, color=STATE_STYLE["FAIL"][0], alpha=0.3, linestyle=":")
    ax.set_xlabel("trial (as numbered on the console)")
    ax.set_ylabel(_label(result))
    ax.set_title(f"Sweep {_sweep_name(result)}: {len(trials)} trials")
    ax.legend(handles=[*_legend_states(ax, trials), *ax.get_legend_handles_labels()[0]], loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    ax.xaxis.get_major_locator().set_params(integer=True)
    return fig


def _curves(plt, trials, result):
    """The metric per epoch of every trial; pruned trials end in a cross where they were cut."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    best = _best_number(trials, result)
    cut_at: dict[tuple, list[int]] = {}  # where pruned trials ended: several at one point get one mark, labelled with them all
    for t in trials:
        if not t["history"]:
            continue
        colour, _ = STATE_STYLE[t["state"]]
        epochs, values = list(t["history"]), list(t["history"].values())
        is_best = t["number"] == best
        ax.plot(epochs, values, color="#2ca02c" if is_best else colour, linewidth=2.5 if is_best else 1, alpha=1 if is_best else 0.6,
                linestyle="--" if t["state"] == "PRUNED" else "-", label=f"trial {t['number']} (best)" if is_best else None, zorder=3 if is_best else 2)
        if t["state"] == "PRUNED":
            ax.scatter(epochs[-1], values[-1], color=colour, marker="x", s=40, zorder=3)
            cut_at.setdefault((epochs[-1], float(f"{values[-1]:.3g}")), []).append(t["number"])
    for (epoch, value), numbers in cut_at.items():
        if len(numbers) > 1:
            ax.annotate(f"trials {', '.join(map(str, numbers))}", (epoch, value), textcoords="offset points", xytext=(6, 4),
                        fontsize=7, color=STATE_STYLE["PRUNED"][0])
    ax.set_xlabel("epoch")
    ax.set_ylabel(_label(result))
    ax.set_title("Each trial's curve (dashed and crossed: pruned by the scheduler)")
    ax.legend(handles=[*_legend_states(ax, trials), *ax.get_legend_handles_labels()[0]], loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    ax.xaxis.get_major_locator().set_params(integer=True)
    return fig


def _importances(plt, trials, result):
    """Optuna's parameter importances (fANOVA), with how many trials they rest on."""
    import optuna

    complete = sum(t["state"] == "COMPLETE" for t in trials)
    if complete < 2:
        log.info("no param_importances.png: %d complete trial(s); importances need at least 2", complete)
        return None
    importances = optuna.importance.get_param_importances(result.study)
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(names) + 1.6))
    ax.barh(names, [importances[n] for n in names], color="#1f77b4")
    ax.set_xlabel(f"share of the variance of {result.metric} (fANOVA)")
    title = f"Parameter importances, from {complete} complete trials"
    if complete < FEW_TRIALS:
        title += f"\n(fewer than {FEW_TRIALS}: a rough guide only)"
        log.warning("param_importances.png rests on %d complete trials: a rough guide only", complete)
    ax.set_title(title)
    ax.set_xlim(0, 1)
    return fig


def _parallel(plt, trials, result):
    """One line per trial across the parameters; colour: the metric (dark = better); pruned dashed."""
    import matplotlib as mpl
    import optuna

    names = sorted({n for t in trials for n in t["params"]})
    distributions = {k: v for trial in result.study.trials for k, v in trial.distributions.items()}
    scored = [t for t in trials if t["value"] is not None]
    if not names or not scored:
        return None
    values = [t["value"] for t in scored]
    norm = mpl.colors.Normalize(min(values), max(values) if max(values) > min(values) else min(values) + 1)
    cmap = mpl.colormaps["viridis" if result.mode == "min" else "viridis_r"]  # dark purple: the best end
    axes_ticks = []
    labels = list(names)  # the axis names, with "(log scale)" where the range is drawn so
    columns = []
    for i, name in enumerate(names):
        raw = [t["params"].get(name) for t in scored]
        choice = isinstance(distributions.get(name), optuna.distributions.CategoricalDistribution)
        if not choice and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw if v is not None):
            lo, hi = min(v for v in raw if v is not None), max(v for v in raw if v is not None)
            log_scale = lo > 0 and hi / lo > 20
            scale = math.log if log_scale else (lambda v: v)

            def to(v, lo=scale(lo), hi=scale(hi), scale=scale):
                return 0.5 if hi == lo else (scale(v) - lo) / (hi - lo)

            axes_ticks.append([(0.0, f"{lo:.3g}"), (1.0, f"{hi:.3g}")])
            if log_scale:
                labels[i] += "\n(log scale)"
        else:
            levels = [str(v) for v in sorted({v for v in raw}, key=lambda v: (not isinstance(v, (int, float)), v if isinstance(v, (int, float)) else str(v)))]
            position = {level: (i / (len(levels) - 1) if len(levels) > 1 else 0.5) for i, level in enumerate(levels)}

            def to(v, position=position):
                return position[str(v)]

            axes_ticks.append([(position[level], level) for level in levels])
        columns.append([to(v) if v is not None else float("nan") for v in raw])
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 3, 4.8))
    xs = list(range(len(names)))
    order = sorted(range(len(scored)), key=lambda i: -norm(values[i]) if result.mode == "min" else norm(values[i]))
    for i in order:  # the best drawn last, on top
        t = scored[i]
        ax.plot(xs, [col[i] for col in columns], color=cmap(norm(values[i])), linewidth=2.2 if t["state"] == "COMPLETE" else 1.2,
                linestyle="--" if t["state"] == "PRUNED" else "-", alpha=0.9)
    for x, ticks in zip(xs, axes_ticks):
        ax.axvline(x, color="black", linewidth=0.8)
        for y, text in ticks:
            ax.text(x + 0.03, y, text, fontsize=8, va="center", bbox={"facecolor": "white", "edgecolor": "none", "pad": 1}, zorder=4)
    ax.set_xticks(xs, labels)
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(names) - 0.5)
    ax.set_facecolor("white")
    bar = fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax)
    bar.set_label(_label(result))
    ax.set_title(f"Parameters of {len(scored)} trials (dashed: pruned; failed trials have no value)")
    return fig


def _best_number(trials, result):
    complete = [t for t in trials if t["state"] == "COMPLETE" and t["value"] is not None]
    if not complete:
        return None
    pick = min if result.mode == "min" else max
    return pick(complete, key=lambda t: t["value"])["number"]
