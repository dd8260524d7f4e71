"""What a finished sweep leaves in its directory: best_config.yaml, trials.csv and plots."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from trainyard._logging import get_logger

log = get_logger("trainyard.hpo")

PLOTS = {
    "optimization_history.png": "plot_optimization_history",
    "param_importances.png": "plot_param_importances",
    "parallel_coordinates.png": "plot_parallel_coordinate",
}


def write_outputs(result: Any) -> None:
    """Best config as YAML, every trial as CSV, and the Optuna plots that apply."""
    out = Path(result.path)
    if "://" in result.path:  # remote storage: outputs stay with the caller
        return
    out.mkdir(parents=True, exist_ok=True)
    result.best_config.to_yaml(out / "best_config.yaml")
    result.dataframe.to_csv(out / "trials.csv", index=False)
    result.plots = _plots(result.study, out)


def _plots(study: Any, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm

    logging.getLogger("optuna").setLevel(logging.ERROR)
    written = []
    for filename, fn in PLOTS.items():
        try:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
                axes = getattr(ovm, fn)(study)
            figure = axes.flat[0].figure if hasattr(axes, "flat") else axes.figure
            figure.savefig(out / filename, dpi=100, bbox_inches="tight")
            plt.close(figure)
            written.append(str(out / filename))
        except Exception as e:  # noqa: BLE001 - e.g. importances need 2+ complete trials
            log.debug("no %s: %s", filename, e)
    return written
