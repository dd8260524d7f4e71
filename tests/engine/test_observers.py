"""W&B logging runs offline in tests: it never touches the network."""

from types import SimpleNamespace

from pathlib import Path

import pytest

from tests.helpers import VOCAB, lm_factory, lm_samples
from trainyard import Trainer, TrainingConfig

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
