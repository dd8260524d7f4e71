"""W&B logging runs offline in tests: it never touches the network."""

from pathlib import Path
from types import SimpleNamespace

import pytest
from trainyard import Trainer, TrainingConfig

from tests.helpers import VOCAB, lm_factory, lm_samples

wandb = pytest.importorskip("wandb")


@pytest.fixture
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    wandb.teardown()  # wandb keeps settings (its directory too) process-wide: start fresh
    yield tmp_path
    wandb.teardown()


@pytest.mark.slow
def test_wandb_logs_metrics_and_config_offline(offline):
    tc = TrainingConfig(epochs=2, wandb_project="trainyard-test", checkpoint_dir=str(offline / "ck"))
    logged, runs = [], []
    real_log = wandb.sdk.wandb_run.Run.log

    def spy(self, data, *a, **k):
        logged.append(dict(data))
        runs.append(self)
        return real_log(self, data, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(wandb.sdk.wandb_run.Run, "log", spy)
        Trainer(lm_factory(), SimpleNamespace(vocab_size=VOCAB), tc).train(lm_samples(8), lm_samples(4))
    assert wandb.run is None  # the run we started is finished
    epochs = [d for d in logged if "epoch" in d]
    assert [d["epoch"] for d in epochs] == [1, 2] and all("val/loss" in d for d in epochs)
    assert any("train/step_loss" in d for d in logged)
    settings = runs[0].settings
    assert settings.mode == "offline" and "offline-run-" in settings.sync_dir
    assert Path(settings.sync_dir).is_dir(), "the offline run is written to disk, not sent"


@pytest.mark.slow
def test_wandb_uses_an_already_active_run_and_leaves_it_open(offline):
    run = wandb.init(project="mine", mode="offline")
    try:
        tc = TrainingConfig(epochs=1, wandb_project="mine", checkpoint_dir=str(offline / "ck"))
        Trainer(lm_factory(), SimpleNamespace(vocab_size=VOCAB), tc).train(lm_samples(8))
        assert wandb.run is run
        assert run.config["trainyard"]["training"]["epochs"] == 1
    finally:
        run.finish()


# -- MLflow and TensorBoard, read back with their own clients --------------------------------


def test_mlflow_logs_params_step_and_epoch_metrics_to_a_local_store(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    tc = TrainingConfig(epochs=2, batch_size=4, mlflow_experiment="trainyard-test", checkpoint_dir=str(tmp_path / "ck"))
    results = Trainer(lm_factory(), SimpleNamespace(vocab_size=VOCAB), tc).train(lm_samples(8), lm_samples(4))
    assert mlflow.active_run() is None  # the run it started is ended
    runs = mlflow.search_runs(experiment_names=["trainyard-test"])
    assert len(runs) == 1 and runs["params.training.epochs"][0] == "2" and runs["params.model.vocab_size"][0] == str(VOCAB)
    assert runs["tags.mlflow.runName"][0] == "ck"  # the run's own name (its folder's), as on every output of it
    client = mlflow.tracking.MlflowClient()
    run_id = runs["run_id"][0]
    steps = client.get_metric_history(run_id, "train/step_loss")
    assert [m.step for m in steps] == [1, 2, 3, 4] and [m.value for m in steps] == pytest.approx(results["loss_history"])
    epochs = client.get_metric_history(run_id, "val/loss")
    assert [m.value for m in epochs] == pytest.approx(list(results["metrics_summary"]["val/loss"]))
    assert client.get_metric_history(run_id, "throughput/tokens_per_s")[0].value > 0


def test_mlflow_uses_an_active_run_and_leaves_it_open(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("mine")
    with mlflow.start_run() as run:
        tc = TrainingConfig(epochs=1, mlflow_experiment="ignored-when-a-run-is-active", checkpoint_dir=str(tmp_path / "ck"))
        Trainer(lm_factory(), SimpleNamespace(vocab_size=VOCAB), tc).train(lm_samples(8))
        assert mlflow.active_run().info.run_id == run.info.run_id
    assert mlflow.tracking.MlflowClient().get_metric_history(run.info.run_id, "train/loss")


def test_tensorboard_writes_step_and_epoch_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tc = TrainingConfig(epochs=2, batch_size=4, tensorboard_dir=str(tmp_path / "tb"), checkpoint_dir=str(tmp_path / "ck"), eval_every_n_steps=1)
    results = Trainer(lm_factory(), SimpleNamespace(vocab_size=VOCAB), tc).train(lm_samples(8), lm_samples(4))
    (run_dir,) = (tmp_path / "tb").iterdir()
    assert run_dir.name == "ck"  # the run's name: its checkpoint folder's
    events = EventAccumulator(str(run_dir))
    events.Reload()
    steps = events.Scalars("train/step_loss")
    assert [e.step for e in steps] == [1, 2, 3, 4] and [e.value for e in steps] == pytest.approx(results["loss_history"], rel=1e-6)
    val = events.Scalars("val/loss")  # every evaluation at its step: every step here, each epoch's end in its row
    assert [e.step for e in val] == [1, 2, 3, 4]
    assert [e.value for e in val] == pytest.approx([row["val/loss"] for row in results["eval_history"]], rel=1e-6)
    assert "time/step_ms" in events.Tags()["scalars"]


def test_a_missing_tracker_package_is_named_with_the_fix(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if it were not installed
    tc = TrainingConfig(epochs=1, mlflow_experiment="x", checkpoint_dir=str(tmp_path / "ck"))
    with pytest.raises(ImportError, match=r"mlflow_experiment is set but mlflow is not installed: pip install 'trainyard\[tracking\]'"):
        Trainer(lm_factory(), SimpleNamespace(vocab_size=VOCAB), tc).train(lm_samples(8))
