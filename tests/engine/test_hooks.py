from types import SimpleNamespace

import pytest
from trainyard import Trainer, TrainingConfig, TrainingHooks
from trainyard.engine.hooks import Event

from tests.helpers import VOCAB, lm_factory, lm_samples

CONFIG = SimpleNamespace(vocab_size=VOCAB)


class Recorder(TrainingHooks):
    def __init__(self):
        self.events = []

    def on_train_begin(self, trainer, train_dataset, val_dataset):
        self.events.append(("train_begin", len(train_dataset), len(val_dataset)))

    def on_epoch_begin(self, trainer, epoch):
        self.events.append(("epoch_begin", epoch))

    def on_batch_begin(self, trainer, batch):
        self.events.append(("batch_begin",))

    def on_step_end(self, trainer, step, metrics):
        assert step == trainer.state.global_step and metrics == trainer.step_metrics
        assert set(metrics) == {"train/step_loss", "train/grad_norm", "train/learning_rate", "time/step_ms"}
        self.events.append(("step_end", step))

    def on_batch_end(self, trainer, batch, outputs):
        assert set(outputs) == {"loss", "logits", "model_output"} and outputs["loss"].dim() == 0
        self.events.append(("batch_end",))

    def on_validation_end(self, trainer, epoch, metrics):
        assert "val/loss" in metrics
        self.events.append(("validation_end", epoch))

    def on_checkpoint(self, trainer, path):
        self.events.append(("checkpoint", path.rsplit("_", 2)[-2:]))

    def on_epoch_end(self, trainer, epoch, metrics):
        assert metrics["epoch"] == epoch
        self.events.append(("epoch_end", epoch))

    def on_train_end(self, trainer, results):
        assert "loss_history" in results
        self.events.append(("train_end",))


def test_every_event_fires_in_order_the_expected_number_of_times(tmp_path):
    hooks = Recorder()
    # 12 samples / batch 4 = 3 batches per epoch; accumulation 1; a step checkpoint every 2 steps.
    tc = TrainingConfig(epochs=2, batch_size=4, checkpoint_every_n_steps=2, checkpoint_dir=str(tmp_path / "r"))
    Trainer(lm_factory(), CONFIG, tc, hooks=hooks).train(lm_samples(12), lm_samples(5))

    def batch(step):  # every batch ends a window (no accumulation): one optimizer step each
        return [("batch_begin",), ("step_end", step), ("batch_end",)]

    expected = [("train_begin", 12, 5)]
    # step 2 of epoch 1 and step 4 (= batch 1 of epoch 2) get a mid-epoch checkpoint.
    expected += [("epoch_begin", 1), *batch(1), *batch(2), ("checkpoint", ["e0001", "b0000002"]), *batch(3)]
    expected += [("validation_end", 1), ("checkpoint", ["e0001", "b0000003"]), ("epoch_end", 1)]
    expected += [("epoch_begin", 2), *batch(4), ("checkpoint", ["e0002", "b0000001"]), *batch(5), *batch(6)]
    expected += [("validation_end", 2), ("checkpoint", ["e0002", "b0000003"]), ("epoch_end", 2), ("train_end",)]
    assert hooks.events == expected


def test_the_step_event_fires_once_per_optimizer_step_after_its_window(tmp_path):
    """Accumulation 2 over 3 batches an epoch: windows of 2 and 1 batches, so steps end on
    the 2nd and 3rd batch; a run stopped inside a window and resumed carries on counting."""

    class StopInEpoch2(Recorder):
        def on_batch_end(self, trainer, batch, outputs):
            super().on_batch_end(trainer, batch, outputs)
            if trainer.state.epoch == 2 and trainer.state.batch_in_epoch == 1:
                trainer.request_stop("test")

    def steps(hooks):
        return [e for e in hooks.events if e[0] in ("batch_begin", "step_end")]

    tc = TrainingConfig(epochs=2, batch_size=4, gradient_accumulation_steps=2, checkpoint_dir=str(tmp_path / "r"))
    first, second = StopInEpoch2(), Recorder()
    Trainer(lm_factory(), CONFIG, tc, hooks=first).train(lm_samples(12), lm_samples(4))
    Trainer(lm_factory(), CONFIG, tc, hooks=second).train(lm_samples(12), lm_samples(4), resume_from=str(tmp_path / "r"))
    window, end = [("batch_begin",), ("batch_begin",)], [("batch_begin",)]
    assert steps(first) == [*window, ("step_end", 1), *end, ("step_end", 2), ("batch_begin",)]
    assert steps(second) == [("batch_begin",), ("step_end", 3), *end, ("step_end", 4)]


def test_every_event_is_a_hook_method():
    for event in Event:
        assert callable(getattr(TrainingHooks, event.value))


def test_subclasses_override_any_subset_and_several_hooks_fire_in_order(tmp_path):
    calls = []

    class A(TrainingHooks):
        def on_epoch_end(self, trainer, epoch, metrics):
            calls.append(("A", epoch))

    class B(TrainingHooks):
        def on_epoch_end(self, trainer, epoch, metrics):
            calls.append(("B", epoch))

    tc = TrainingConfig(epochs=2, checkpoint_dir=str(tmp_path / "r"))
    Trainer(lm_factory(), CONFIG, tc, hooks=[A(), B()]).train(lm_samples(8))
    assert calls == [("A", 1), ("B", 1), ("A", 2), ("B", 2)]


def test_a_misspelled_hook_is_refused_instead_of_never_firing():
    class Typo(TrainingHooks):
        def on_epoch_ended(self, trainer, epoch, metrics):
            pass

    with pytest.raises(TypeError, match="Typo.on_epoch_ended is not a hook event"):
        Trainer(lm_factory(), CONFIG, TrainingConfig(), hooks=Typo())


def test_hooks_must_be_training_hooks():
    with pytest.raises(TypeError, match="subclass trainyard.TrainingHooks"):
        Trainer(lm_factory(), CONFIG, TrainingConfig(), hooks=[object()])


def test_a_hook_can_stop_training(tmp_path):
    class StopAfterThree(TrainingHooks):
        def on_batch_end(self, trainer, batch, outputs):
            if trainer.state.global_step == 3:
                trainer.request_stop("enough")

    tc = TrainingConfig(epochs=5, batch_size=4, checkpoint_dir=str(tmp_path / "r"))
    r = Trainer(lm_factory(), CONFIG, tc, hooks=StopAfterThree()).train(lm_samples(24))
    assert r["stopped_early"] == "enough" and len(r["loss_history"]) == 3
    assert r["checkpoint_path"].endswith("e0001_b0000003")
    assert len(r["metrics_summary"]) == 0 and r["final_loss"] == pytest.approx(sum(r["loss_history"]) / 3, rel=1e-6)


def test_built_in_observers_fire_before_user_hooks_and_see_what_hooks_see(tmp_path):
    """The epoch line, progress bar, W&B and export are hooks on the same dispatcher: a
    user's on_train_end already finds the export, and step metrics are readable by any hook."""
    seen = {}

    class Reader(TrainingHooks):
        def on_batch_end(self, trainer, batch, outputs):
            if trainer.state.global_step == 1 and "step" not in seen:
                seen["step"] = dict(trainer.step_metrics)

        def on_train_end(self, trainer, results):
            seen["export"] = results.get("export_path")

    tc = TrainingConfig(epochs=1, batch_size=4, export_bundle=True, checkpoint_dir=str(tmp_path / "r"))
    trainer = Trainer(lm_factory(), CONFIG, tc, hooks=Reader())
    assert [type(o).__name__ for o in trainer.hooks.observers] == ["ProgressBar", "EpochLog", "ExportBundle"]
    results = trainer.train(lm_samples(8))
    assert seen["export"] == results["export_path"] and (tmp_path / "r" / "export" / "MANIFEST.json").is_file()
    assert set(seen["step"]) == {"train/step_loss", "train/grad_norm", "train/learning_rate", "time/step_ms"}
    assert seen["step"]["train/step_loss"] == results["loss_history"][0]


def test_observers_are_closed_when_a_run_fails(tmp_path):
    from trainyard.engine.hooks import Observer

    closed = []

    class Tracker(Observer):
        def close(self):
            closed.append(True)

    class Boom(TrainingHooks):
        def on_batch_end(self, trainer, batch, outputs):
            raise RuntimeError("user hook failed")

    trainer = Trainer(lm_factory(), CONFIG, TrainingConfig(epochs=1, checkpoint_dir=str(tmp_path / "r")), hooks=Boom())
    trainer.hooks.observers.append(Tracker())
    with pytest.raises(RuntimeError, match="user hook failed"):
        trainer.train(lm_samples(8))
    assert closed == [True]
