"""Sweeps on the built-in task: result consistency, failing trials, resume, Train-in-Tune."""

import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from trainyard import TrainingConfig
from trainyard.data import load_builtin
from trainyard.data.addition import model_config

from tests.hpo.models import gpt_or_nan, tiny_gpt

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
TRAIN, VAL = load_builtin("addition", train_size=128, val_size=32, digits=2)
CONFIG = model_config(2, d_model=16, n_layers=1, n_heads=2)
SPACE = {
    "metric": "val/loss",
    "mode": "min",
    "params": {"learning_rate": {"loguniform": [1e-4, 1e-2]}, "batch_size": {"choice": [16, 32]}, "model.d_model": {"choice": [16, 32]}},
}


def test_a_four_trial_sweep_returns_consistent_results(ray_session, tmp_path, caplog):
    import logging
    import re

    from trainyard.hpo import sweep

    with caplog.at_level(logging.INFO, logger="trainyard"):
        result = sweep(tiny_gpt, CONFIG, TRAIN, VAL, space=SPACE, training_config=TrainingConfig(epochs=2),
                       num_samples=4, storage_path=tmp_path, name="four", seed=1)
    df = result.dataframe
    assert len(df) == 4 and set(df["state"]) <= {"COMPLETE", "PRUNED"}
    # the console's last word on each trial agrees with its state in trials.csv, under one
    # numbering (trials run at once and end in any order; the searcher's ids carry no index)
    ends = dict(re.findall(r"trial +(\d+) \|.*\| (done|pruned)\b", caplog.text))
    assert {int(n): "COMPLETE" if end == "done" else "PRUNED" for n, end in ends.items()} == dict(zip(df["number"], df["state"]))
    assert sorted(df["number"]) == [1, 2, 3, 4]
    best_row = df.loc[df["val/loss"].idxmin()]
    assert result.best_metrics["val/loss"] == pytest.approx(best_row["val/loss"])
    assert result.best_params == {k: best_row[k] for k in ("learning_rate", "batch_size", "model.d_model")}
    assert result.best_config.learning_rate == result.best_params["learning_rate"]
    assert result.best_config.batch_size == result.best_params["batch_size"] and result.best_config.epochs == 2
    assert Path(result.best_checkpoint, "COMPLETE").exists()  # an engine checkpoint, verified format
    assert len(result.study.trials) == 4
    assert result.study.best_value == pytest.approx(df.loc[df["state"] == "COMPLETE", "val/loss"].min())
    states = {t.state.name for t in result.study.trials}
    assert states == set(df["state"])
    sweep_dir = tmp_path / "four"
    assert (sweep_dir / "best_config.yaml").exists() and (sweep_dir / "trials.csv").exists()
    assert (sweep_dir / "optimization_history.png").exists()
    assert TrainingConfig.from_yaml(sweep_dir / "best_config.yaml") == result.best_config


def test_trials_can_skip_the_per_epoch_checkpoint(ray_session, tmp_path):
    from trainyard.hpo import sweep

    result = sweep(tiny_gpt, CONFIG, TRAIN, VAL, space=SPACE, training_config=TrainingConfig(epochs=3), num_samples=2,
                   scheduler="none", storage_path=tmp_path, name="lean", seed=1, checkpoint_every_epoch=False)
    from trainyard.engine.checkpoint import load

    assert load(result.best_checkpoint).state["position"]["epoch"] == 3  # the final epoch's, verified
    for trial_dir in (tmp_path / "lean").glob("_trial_*"):
        assert len(list(trial_dir.glob("checkpoint_*"))) == 1  # only the final epoch's reached Tune
    with pytest.raises(TypeError, match="checkpoint_every_epoch='no' must be True or False"):
        sweep(tiny_gpt, CONFIG, TRAIN, VAL, space=SPACE, checkpoint_every_epoch="no")


def test_each_trial_logs_to_its_own_tensorboard_run(ray_session, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from trainyard.hpo import sweep

    tc = TrainingConfig(epochs=2, tensorboard_dir=str(tmp_path / "tb"))
    sweep(tiny_gpt, CONFIG, TRAIN, VAL, space=SPACE, training_config=tc, num_samples=2, scheduler="none",
          storage_path=tmp_path / "runs", name="tb", seed=2)
    runs = sorted((tmp_path / "tb").iterdir())
    assert len(runs) == 2
    for run in runs:
        events = EventAccumulator(str(run))
        events.Reload()
        assert [e.step for e in events.Scalars("val/loss")] and len(events.Scalars("train/loss")) == 2


def test_a_failing_trial_is_recorded_as_fail_and_the_sweep_goes_on(ray_session, tmp_path):
    from trainyard.hpo import sweep

    space = {"params": {"learning_rate": {"loguniform": [1e-4, 1e-2]}, "model.explode": {"choice": [0, 1]}}}
    result = sweep(gpt_or_nan, {**CONFIG, "explode": 0}, TRAIN, VAL, space=space, training_config=TrainingConfig(epochs=1),
                   num_samples=6, storage_path=tmp_path, name="fails", scheduler="none", seed=0)
    df = result.dataframe
    failed = df[df["state"] == "FAIL"]
    assert len(failed) >= 1 and (failed["model.explode"] == 1).all()
    assert "loss is nan" in failed["error"].iloc[0]
    assert result.best_params["model.explode"] == 0
    assert sum(t.state.name == "FAIL" for t in result.study.trials) == len(failed)


def test_an_interrupted_sweep_resumes_without_rerunning_finished_trials(ray_session, tmp_path):
    code = f"""
import functools, sys
sys.path.insert(0, {str(ROOT)!r})
from tests.hpo.test_sweep import TRAIN, VAL, CONFIG, SPACE
from tests.hpo.models import tiny_gpt
from trainyard import TrainingConfig
from trainyard.hpo import sweep
sweep(tiny_gpt, CONFIG, TRAIN, VAL, space=SPACE, training_config=TrainingConfig(epochs=3), num_samples=6,
      max_concurrent=1, scheduler="none", storage_path={str(tmp_path)!r}, name="resumable", seed=3)
"""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    driver = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sweep_dir = tmp_path / "resumable"
    deadline = time.time() + 240
    while time.time() < deadline and len(_finished(sweep_dir)) < 2:
        time.sleep(0.5)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver (and its local Ray) dies mid-sweep
    driver.wait()
    finished = _finished(sweep_dir)
    assert len(finished) >= 2, "two trials finished before the driver was killed"

    from trainyard.hpo import sweep

    result = sweep(tiny_gpt, CONFIG, TRAIN, VAL, space=SPACE, training_config=TrainingConfig(epochs=3), num_samples=6,
                   max_concurrent=1, scheduler="none", storage_path=tmp_path, name="resumable", seed=3)
    df = result.dataframe.set_index("trial")
    assert len(df) == 6 and len(result.study.trials) == 6
    for trial_id, val_loss in finished.items():  # kept, not re-run: same result
        assert df.loc[trial_id, "val/loss"] == pytest.approx(val_loss, abs=0)


def test_a_restarted_trial_resumes_from_its_checkpoint(ray_session, tmp_path):
    """A trial that fails once in epoch 2 is retried (max_failures=1) from its epoch-1
    checkpoint: epoch 1 is reported once, and it ends as an uninterrupted trial would."""
    import json

    from trainyard import Trainer
    from trainyard.hpo import sweep

    from tests.hpo.models import gpt_failing_once

    config = {**CONFIG, "marker": str(tmp_path / "marker")}
    space = {"params": {"learning_rate": {"choice": [3e-3]}}}
    tc = TrainingConfig(epochs=3, batch_size=16)
    result = sweep(gpt_failing_once, config, TRAIN, VAL, space=space, training_config=tc, num_samples=1,
                   scheduler="none", storage_path=tmp_path, name="retry", max_failures=1)
    assert (tmp_path / "marker").exists(), "the trial failed once"
    assert result.dataframe["state"].tolist() == ["COMPLETE"]
    (result_file,) = (tmp_path / "retry").glob("*/result.json")
    reported = [json.loads(line)["epoch"] for line in result_file.read_text().splitlines() if line.strip()]
    assert reported.count(1) == 1 and reported[-1] == 3, reported
    uninterrupted = Trainer(functools.partial(gpt_failing_once, config), config, tc.replace(learning_rate=3e-3, checkpoint_dir=str(tmp_path / "ref"))).train(TRAIN, VAL)
    assert result.best_metrics["val/loss"] == pytest.approx(uninterrupted["final_loss"], abs=1e-6)


def _finished(sweep_dir: Path) -> dict[str, float]:
    """trial_id -> last val/loss of trials whose result.json has a done (last epoch) row."""
    import json

    out = {}
    for result_file in sweep_dir.glob("*/result.json"):
        rows = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
        if rows and rows[-1].get("training_iteration") == 3:
            out[rows[-1]["trial_id"]] = rows[-1]["val/loss"]
    return out


@pytest.mark.parametrize("parallelism", ["ddp", "fsdp"])
def test_multi_worker_trials_run_a_ray_train_run_inside_tune(ray_session, tmp_path, parallelism):
    from trainyard.engine import checkpoint as ck
    from trainyard.hpo import sweep

    space = {"params": {"learning_rate": {"choice": [3e-3]}}}
    result = sweep(tiny_gpt, CONFIG, TRAIN, VAL, space=space, training_config=TrainingConfig(epochs=2, batch_size=16, parallelism=parallelism),
                   num_samples=1, workers_per_trial=2, storage_path=tmp_path, name="nested", scheduler="none")
    assert result.dataframe["state"].tolist() == ["COMPLETE"]
    assert result.best_metrics["training_iteration"] == 2 and result.best_metrics["val/loss"] > 0
    # The trial's Ray Train run keeps its checkpoints in the trial's directory: sharded by both workers under FSDP.
    newest = max((tmp_path / "nested").glob("*/train/train-*/checkpoint_e*"))
    saved = ck.load(newest)
    assert saved.sharded == (parallelism == "fsdp") and saved.state["training_config"]["parallelism"] == parallelism
