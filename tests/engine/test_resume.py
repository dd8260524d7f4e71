"""Resuming from any checkpoint gives the uninterrupted run, bit for bit, on CPU."""

import shutil
from types import SimpleNamespace

import pytest
import torch
from trainyard import Trainer, TrainingConfig, TrainingHooks
from trainyard.engine import run_folder

from tests.helpers import VOCAB, lm_factory, lm_samples

CONFIG = SimpleNamespace(vocab_size=VOCAB)
DATA = lm_samples(26)  # 26 samples / batch 4: a short last batch in every epoch
VAL = lm_samples(6, seed=9)


class StopAt(TrainingHooks):
    """Requests a stop after micro-batch `batch` of `epoch` (or at the end of that epoch)."""

    def __init__(self, epoch, batch=None):
        self.epoch, self.batch = epoch, batch

    def on_batch_end(self, trainer, batch, outputs):
        s = trainer.state
        if self.batch is not None and (s.epoch, s.batch_in_epoch) == (self.epoch, self.batch):
            trainer.request_stop("test")

    def on_epoch_end(self, trainer, epoch, metrics):
        if self.batch is None and epoch == self.epoch:
            trainer.request_stop("test")


def run(ckdir, hooks=None, resume_from=None, dropout=0.2, **cfg):
    settings = dict(learning_rate=1e-2, batch_size=4, epochs=3, warmup_steps=2, checkpoint_dir=str(ckdir), keep_last_n_checkpoints=None)
    settings.update(cfg)
    trainer = Trainer(lm_factory(dropout=dropout), CONFIG, TrainingConfig(**settings), hooks=hooks)
    results = trainer.train(DATA, VAL, resume_from=resume_from)
    return results, trainer.model


def assert_same_run(resumed, full):
    (r, model), (f, full_model) = resumed, full
    assert r["loss_history"] == f["loss_history"]
    assert r["grad_norm_history"] == f["grad_norm_history"]
    cols = ["epoch", "train/loss", "val/loss", "train/accuracy", "val/accuracy", "train/learning_rate"]
    assert r["metrics_summary"][cols].equals(f["metrics_summary"][cols])
    for (name, a), (_, b) in zip(model.state_dict().items(), full_model.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize(
    "accum, stop",
    [
        (1, (2, None)),  # at an epoch end
        (1, (2, 3)),  # mid-epoch
        (3, (1, 4)),  # mid-epoch and mid-accumulation: 1 of 3 micro-batches of a window done
        (4, (2, 5)),  # inside the short last window of an epoch (windows of 4 and 3 batches)
        (3, (2, 7)),  # on the last batch of an epoch: the epoch still completes
    ],
)
def test_stop_and_resume_is_bit_identical(tmp_path, accum, stop):
    full = run(tmp_path / "full", gradient_accumulation_steps=accum)
    first, _ = run(tmp_path / "part", hooks=StopAt(*stop), gradient_accumulation_steps=accum)
    assert first["stopped_early"] == "test"
    resumed = run(tmp_path / "part", resume_from=first["checkpoint_path"], gradient_accumulation_steps=accum)
    assert_same_run(resumed, full)


def test_resume_from_any_step_checkpoint_of_a_finished_run(tmp_path):
    full = run(tmp_path / "full", checkpoint_every_n_steps=2)
    saved = run_folder.list_checkpoints(tmp_path / "full")
    assert len(saved) > 6
    for chosen in (saved[1], saved[4]):
        copy = tmp_path / f"copy-{chosen.name}"
        shutil.copytree(chosen, copy / chosen.name)
        assert_same_run(run(copy, resume_from=copy / chosen.name, checkpoint_every_n_steps=2), full)


def test_feature_1_resume_with_the_same_model_object_continues(tmp_path):
    """The seed's Feature 1: train, then resume a new Trainer from results['checkpoint_path']."""
    model = lm_factory()()
    cfg = TrainingConfig(epochs=2, checkpoint_dir=str(tmp_path / "r"), learning_rate=1e-2, use_lr_schedule=False)
    results = Trainer(model, CONFIG, cfg).train(DATA, VAL)
    more = Trainer(model, CONFIG, cfg.replace(epochs=3)).train(DATA, VAL, resume_from=results["checkpoint_path"])
    assert len(more["loss_history"]) == 3 * 7 and more["loss_history"][:14] == results["loss_history"]
    assert list(more["metrics_summary"]["epoch"]) == [1, 2, 3]


def test_resume_from_a_finished_run_trains_nothing_more(tmp_path):
    f, _ = run(tmp_path / "r")
    again, _ = run(tmp_path / "r", resume_from=tmp_path / "r")
    assert again["loss_history"] == f["loss_history"]


def test_mid_epoch_resume_refuses_a_different_batch_order(tmp_path):
    first, _ = run(tmp_path / "r", hooks=StopAt(1, 3))
    with pytest.raises(ValueError, match=r"with a global batch of 8 \(batch_size=8 on 1 worker\): it was saved with 4 samples a step \(batch_size=4 on 1 worker\)"):
        run(tmp_path / "r", resume_from=first["checkpoint_path"], batch_size=8)


def test_epoch_end_resume_accepts_a_new_batch_size(tmp_path):
    first, _ = run(tmp_path / "r", hooks=StopAt(1))
    resumed, _ = run(tmp_path / "r", resume_from=first["checkpoint_path"], batch_size=8)
    assert list(resumed["metrics_summary"]["epoch"]) == [1, 2, 3]


def assert_same_losses(resumed, full):
    """The same samples in the same steps, summed in other micro-batches: equal to float rounding."""
    (r, _), (f, _) = resumed, full
    assert r["loss_history"] == pytest.approx(f["loss_history"], abs=1e-5)
    for col in ("train/loss", "val/loss", "train/accuracy"):
        assert list(r["metrics_summary"][col]) == pytest.approx(list(f["metrics_summary"][col]), abs=1e-5), col


def test_a_mid_epoch_resume_splits_the_same_global_batch_otherwise_and_continues_with_the_same_samples(tmp_path, caplog):
    # 12 samples a step: 2 micro-batches of 6, resumed as 3 of 4 (no dropout: its masks follow the micro-batches)
    full = run(tmp_path / "full", dropout=0.0, global_batch_size=12, batch_size=6)
    first, _ = run(tmp_path / "part", hooks=StopAt(1, 4), dropout=0.0, global_batch_size=12, batch_size=6)  # after step 2
    caplog.set_level("INFO", logger="trainyard")
    resumed = run(tmp_path / "part", resume_from=first["checkpoint_path"], dropout=0.0, global_batch_size=12, batch_size=4)
    assert_same_losses(resumed, full)
    assert len(resumed[0]["loss_history"]) == 3 * 3  # 26 samples: steps of 12, 12 and 2, each epoch
    assert "resumed from" in caplog.text and "(epoch 1, step 2)" in caplog.text


def test_the_global_batch_is_kept_by_the_checkpoint_when_nothing_asks_otherwise(tmp_path):
    from trainyard.engine import checkpoint as ck

    first, _ = run(tmp_path / "r", hooks=StopAt(1, 4), dropout=0.0, batch_size=3, gradient_accumulation_steps=2)
    saved = ck.load(first["checkpoint_path"]).state["batch_plan"]
    assert saved == {"global_batch": 6, "micro_batch": 3, "accumulation": 2, "world_size": 1}
    full = run(tmp_path / "full", dropout=0.0, global_batch_size=6, batch_size=2)
    assert_same_losses(run(tmp_path / "r", resume_from=first["checkpoint_path"], dropout=0.0, global_batch_size=6, batch_size=2), full)


def test_a_step_cut_inside_its_accumulation_resumes_only_with_the_same_split(tmp_path):
    first, _ = run(tmp_path / "r", hooks=StopAt(1, 3), global_batch_size=12, batch_size=6)  # inside step 2
    with pytest.raises(ValueError, match=r"in micro-batches of 4: it was saved inside an accumulation window on 1 worker\(s\) in micro-batches of 6; "
                                         r"resume with those, or from a checkpoint at the end of a step"):
        run(tmp_path / "r", resume_from=first["checkpoint_path"], global_batch_size=12, batch_size=4)


def test_a_global_batch_with_its_own_accumulation_is_refused():
    with pytest.raises(ValueError, match=r"gradient_accumulation_steps=2 with global_batch_size=64: the accumulation follows from the global batch"):
        TrainingConfig(global_batch_size=64, gradient_accumulation_steps=2)
