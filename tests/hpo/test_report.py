"""The sweep's plots, drawn from a made-up sweep of every trial state (no Ray): each file is
a real image, numbered as the console numbers trials, and importances say when they rest
on too few trials."""

import logging

import pytest
from trainyard import TrainingConfig
from trainyard.hpo.report import PLOTS, trial_number, write_outputs
from trainyard.hpo.runner import SweepResult


def made_up_sweep(tmp_path, n_complete, tied=False):
    import optuna
    import pandas as pd

    space = {"learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
             "batch_size": optuna.distributions.CategoricalDistribution([16, 32, 64])}
    study = optuna.create_study(direction="minimize")
    rows = []
    states = ["COMPLETE"] * n_complete + ["PRUNED", "PRUNED", "FAIL"]
    for i, state in enumerate(states):
        lr, bs = 10 ** (-4 + 3 * i / len(states)), [16, 32, 64][i % 3]
        epochs = 3 if state == "COMPLETE" else (1 if state == "PRUNED" else 0)
        history = {e: 2.0 / (e + lr * 100) + 0.01 * i for e in range(1, epochs + 1)}
        if tied and state == "PRUNED":
            history = {1: 1.5}  # pruned at the same point with the same value
        value = history[epochs] if history else None
        study.add_trial(optuna.trial.create_trial(params={"learning_rate": lr, "batch_size": bs}, distributions=space,
                                                  value=value if state == "COMPLETE" else None,
                                                  state=getattr(optuna.trial.TrialState, state), intermediate_values=history))
        rows.append({"number": i + 1, "trial": f"abc_{i:05d}", "state": state, "learning_rate": lr, "batch_size": bs, "val/loss": value})
    best = min((r for r in rows if r["state"] == "COMPLETE"), key=lambda r: r["val/loss"])
    return SweepResult(best_config=TrainingConfig(), best_params={}, best_metrics={"val/loss": best["val/loss"]}, best_checkpoint=None,
                       dataframe=pd.DataFrame(rows), study=study, path=str(tmp_path / "sweep"), metric="val/loss", mode="min", best_trial=best["trial"])


def test_every_plot_is_a_real_image(tmp_path):
    from PIL import Image

    result = made_up_sweep(tmp_path, n_complete=9)
    write_outputs(result)
    assert [p.rsplit("/", 1)[-1] for p in result.plots] == list(PLOTS)
    for path in result.plots:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 400 and image.height > 200
            assert len(image.convert("L").getcolors(maxcolors=1 << 16) or ()) > 10  # drawn on, not blank


def test_pruned_trials_cut_at_one_point_are_named_not_drawn_as_one_mark(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from trainyard.hpo.report import _curves, _trials

    result = made_up_sweep(tmp_path, n_complete=3, tied=True)
    figure = _curves(plt, _trials(result), result)
    assert [t.get_text() for t in figure.axes[0].texts] == ["trials 4, 5"]
    plt.close(figure)


def test_importances_from_few_trials_say_so_and_from_one_are_not_drawn(tmp_path, caplog):
    result = made_up_sweep(tmp_path / "few", n_complete=3)
    with caplog.at_level(logging.INFO, logger="trainyard"):
        write_outputs(result)
    assert "param_importances.png rests on 3 complete trials: a rough guide only" in caplog.text
    lone = made_up_sweep(tmp_path / "one", n_complete=1)
    write_outputs(lone)
    assert not any(p.endswith("param_importances.png") for p in lone.plots)
    assert any(p.endswith("trial_curves.png") for p in lone.plots)


@pytest.mark.parametrize(("tag", "number"), [("1_batch_size=32,lr=0.001", 1), ("12_batch_size=16", 12), ("", 5), (None, 5), ("odd", 5)])
def test_trials_are_numbered_by_tunes_experiment_tag(tag, number):
    """The searcher's trial ids (e93f7910) carry no index; the experiment tag does."""
    assert trial_number(tag, 5) == number
