"""The options users expect from Lightning or the HF Trainer: the optimizer and schedule by
name, evaluation every N steps, early stopping; each validated, searchable, exactly resumable."""

import logging
import math
from types import SimpleNamespace

import pytest
import torch
from trainyard import Trainer, TrainingConfig
from trainyard.engine.step import learning_rate
from trainyard.hpo.space import load_search_space

from tests.engine.test_resume import StopAt, assert_same_run
from tests.helpers import VOCAB, TinyClassifier, lm_factory, lm_samples

CONFIG = SimpleNamespace(vocab_size=VOCAB)
DATA = lm_samples(26)  # 7 batches of 4 an epoch
VAL = lm_samples(6, seed=9)


def run(ckdir, hooks=None, resume_from=None, data=DATA, val=VAL, **cfg):
    settings = dict(learning_rate=1e-2, batch_size=4, epochs=3, checkpoint_dir=str(ckdir), keep_last_n_checkpoints=None)
    settings.update(cfg)
    trainer = Trainer(lm_factory(dropout=0.2), CONFIG, TrainingConfig(**settings), hooks=hooks)
    return trainer.train(data, val, resume_from=resume_from), trainer


# -- the optimizer by name ---------------------------------------------------------------


@pytest.mark.parametrize(
    "name, kwargs, cls, check",
    [
        ("sgd", {"momentum": 0.9, "nesterov": True}, torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
        ("Adam", {"betas": [0.8, 0.95]}, torch.optim.Adam, {"betas": (0.8, 0.95)}),
        ("adafactor", None, torch.optim.Adafactor, {}),
    ],
)
def test_the_optimizer_is_chosen_by_name_with_its_arguments(tmp_path, name, kwargs, cls, check):
    results, trainer = run(tmp_path, epochs=1, optimizer=name, optimizer_kwargs=kwargs)
    assert type(trainer.optimizer) is cls
    for key, value in check.items():
        assert trainer.optimizer.param_groups[0][key] == value
    decays = sorted(g["weight_decay"] for g in trainer.optimizer.param_groups)
    assert decays == [0.0, 0.01]  # weight decay on matrices only, whichever optimizer
    assert math.isfinite(results["final_loss"])


def test_optimizer_settings_round_trip_through_yaml():
    cfg = TrainingConfig(optimizer="adam", optimizer_kwargs={"betas": (0.9, 0.95), "eps": 1e-6}, lr_schedule="linear")
    again = TrainingConfig.from_yaml(cfg.to_yaml())
    assert again == cfg and again.optimizer_kwargs == {"betas": [0.9, 0.95], "eps": 1e-6}


@pytest.mark.parametrize(
    "settings, words",
    [
        ({"optimizer": "adamww"}, ["must name a torch.optim optimizer", "did you mean 'adamw'"]),
        ({"optimizer": "lbfgs"}, ["needs a closure", "choose one of"]),
        ({"optimizer": "sgd", "optimizer_kwargs": {"momentun": 0.9}}, ["SGD takes no argument 'momentun'", "did you mean 'momentum'"]),
        ({"optimizer_kwargs": {"lr": 0.1}}, ["set lr with the TrainingConfig field 'learning_rate'"]),
        ({"optimizer": "sgd", "optimizer_kwargs": {"momentum": -1.0}}, ["SGD refused it (ValueError", "momentum"]),
        ({"optimizer_kwargs": {"betas": [0.9]}}, ["AdamW refused it (IndexError"]),  # a traceback from the command line, before
        ({"optimizer_kwargs": {"betas": {"a": 1}}}, ["values must be numbers"]),
        ({"lr_schedule": "cosine_annealing"}, ["lr_schedule", "'cosine', 'linear', 'constant'"]),
        ({"use_lr_schedule": False, "lr_schedule": "linear"}, ["no effect with use_lr_schedule=False"]),
        ({"early_stopping_metric": "val/los"}, ["did you mean 'val/loss'"]),
        ({"early_stopping_patience": 5}, ["no effect without early_stopping_metric"]),
        ({"early_stopping_metric": "val/loss", "early_stopping_mode": "lowest"}, ["early_stopping_mode", "'min', 'max'"]),
        ({"eval_every_n_steps": 0}, ["eval_every_n_steps=0", ">= 1"]),
    ],
)
def test_bad_options_name_the_problem_and_the_fix(settings, words):
    with pytest.raises(ValueError) as e:
        TrainingConfig(**settings)
    for word in words:
        assert word in str(e.value)


# -- the learning-rate schedule ------------------------------------------------------------


def test_each_schedule_warms_up_then_takes_its_shape():
    base = dict(learning_rate=1.0, epochs=1, warmup_steps=2, min_lr_ratio=0.1)
    steps = 12  # batches_per_epoch, one step each
    rates = {s: [learning_rate(TrainingConfig(lr_schedule=s, **base), i, steps) for i in range(steps)] for s in ("cosine", "linear", "constant")}
    for s, r in rates.items():
        assert r[:2] == [0.5, 1.0], s  # the same warmup
    assert rates["constant"][2:] == [1.0] * 10
    linear = rates["linear"][2:]
    assert linear[0] == 1.0 and linear[-1] == pytest.approx(0.1 + 0.9 * (1 - 9 / 10))
    assert all(a - b == pytest.approx(0.09) for a, b in zip(linear, linear[1:]))  # a straight line
    cosine = rates["cosine"][2:]
    assert cosine[0] == 1.0 and cosine[5] == pytest.approx(linear[5])  # they meet halfway
    assert cosine[7] < linear[7]  # cosine falls slower at first, then faster
    assert cosine[2] > linear[2]


def test_a_run_follows_the_schedule_it_names(tmp_path):
    results, trainer = run(tmp_path, epochs=2, lr_schedule="linear", warmup_steps=3, min_lr_ratio=0.0, learning_rate=0.1)
    cfg, per_epoch = trainer.training_config, 7
    expected = [learning_rate(cfg, step, per_epoch) for step in (6, 13)]  # the rate of each epoch's last step
    assert results["metrics_summary"]["train/learning_rate"].tolist() == pytest.approx(expected)
    assert expected[-1] == pytest.approx(0.1 * (1 - 10 / 11))


# -- evaluation every N steps, early stopping ------------------------------------------------


def test_evaluation_every_n_steps_is_recorded_and_logged(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="trainyard"):
        results, _ = run(tmp_path, epochs=2, eval_every_n_steps=3)
    steps = [row["global_step"] for row in results["eval_history"]]
    assert steps == [3, 6, 7, 9, 12, 14]  # every 3rd step and each epoch's end (7, 14)
    assert results["eval_history"][2]["val/loss"] == results["metrics_summary"]["val/loss"].iloc[0]
    assert "step 3 (epoch 1/2) | val/loss" in caplog.text


def test_options_that_need_validation_data_say_so_before_training(tmp_path):
    with pytest.raises(ValueError, match="eval_every_n_steps=2 needs validation data.*pass val_data"):
        run(tmp_path, val=None, eval_every_n_steps=2)
    with pytest.raises(ValueError, match="needs validation data.*or watch 'train/loss'"):
        run(tmp_path, val=None, early_stopping_metric="val/loss")


def test_a_metric_the_task_does_not_measure_is_refused(tmp_path):
    data = [(torch.randint(0, VOCAB, (6,)), torch.tensor(i % 3)) for i in range(12)]
    cfg = TrainingConfig(batch_size=4, epochs=2, early_stopping_metric="val/exact_match", checkpoint_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"'val/exact_match' is not measured for this run's task; it measures \['val/loss', 'val/perplexity', 'val/accuracy'\]"):
        Trainer(TinyClassifier(), CONFIG, cfg).train(data, data[:4])


# Random tokens: the validation loss falls for a few steps, then the model overfits (it stops at step 10).
EARLY = dict(epochs=6, eval_every_n_steps=2, early_stopping_metric="val/loss", early_stopping_patience=2, early_stopping_min_delta=0.005, learning_rate=3e-2)


def test_early_stopping_stops_when_the_metric_stops_improving(tmp_path):
    results, _ = run(tmp_path, **EARLY)
    losses = [row["val/loss"] for row in results["eval_history"]]
    assert results["stopped_early"].startswith("early stopping: val/loss has not fallen by more than 0.005 for 2 evaluation(s)")
    best, since_best = math.inf, 0
    for i, loss in enumerate(losses):  # the rule, evaluation by evaluation: it stops at the last one, not sooner
        best, since_best = (loss, 0) if loss < best - 0.005 else (best, since_best + 1)
        assert (since_best >= 2) == (i == len(losses) - 1), (i, losses)
    assert results["global_step"] < 6 * 7  # before the last epoch
    assert results["checkpoint_path"]  # the stopped position is saved


@pytest.mark.parametrize("stop", [(1, 3), (2, 1)])  # mid-epoch; just after an evaluation that did not improve
def test_early_stopping_is_exactly_resumable(tmp_path, stop):
    full = run(tmp_path / "full", **EARLY)
    first, _ = run(tmp_path / "part", hooks=StopAt(*stop), **EARLY)
    assert first["stopped_early"] == "test"
    resumed = run(tmp_path / "part", resume_from=first["checkpoint_path"], **EARLY)
    assert_same_run((resumed[0], resumed[1].model), (full[0], full[1].model))
    assert resumed[0]["stopped_early"] == full[0]["stopped_early"]
    assert resumed[0]["eval_history"] == full[0]["eval_history"]
    again, _ = run(tmp_path / "part", resume_from=resumed[0]["checkpoint_path"], **EARLY)  # a run that stopped early stays stopped
    assert again["global_step"] == full[0]["global_step"] and again["stopped_early"] == full[0]["stopped_early"]


def test_resuming_with_another_optimizer_is_refused(tmp_path):
    first, _ = run(tmp_path, epochs=1)
    with pytest.raises(ValueError, match="with optimizer='sgd': it holds adamw's state.*use optimizer='adamw'"):
        run(tmp_path, epochs=2, optimizer="sgd", resume_from=first["checkpoint_path"])


# -- searchable, and exact match where it means something --------------------------------------


def test_the_options_are_searchable():
    space = load_search_space({"params": {
        "optimizer": {"choice": ["adamw", "sgd", "adafactor"]}, "lr_schedule": {"choice": ["cosine", "linear", "constant"]},
        "early_stopping_patience": {"randint": [1, 5]}, "eval_every_n_steps": {"choice": [50, 100]},
    }})  # fmt: skip
    assert [p.name for p in space.params] == ["optimizer", "lr_schedule", "early_stopping_patience", "eval_every_n_steps"]
    with pytest.raises(ValueError, match="value 'sgdd' is not valid.*did you mean 'sgd'"):
        load_search_space({"params": {"optimizer": {"choice": ["adamw", "sgdd"]}}})


def test_exact_match_is_reported_for_answers_not_for_free_text(tmp_path):
    free, _ = run(tmp_path / "free", epochs=1)
    assert not any("exact_match" in c for c in free["metrics_summary"].columns)
    answers = [{"input_ids": ids, "labels": torch.cat([torch.full((5,), -100), ids[5:]])} for ids in DATA]
    marked, _ = run(tmp_path / "answers", epochs=1, data=answers, val=answers[:6])
    assert {"train/exact_match", "val/exact_match"} <= set(marked["metrics_summary"].columns)


# -- training metrics at an interval ---------------------------------------------------------


def test_training_accuracy_is_measured_on_every_nth_step_and_the_training_itself_is_unchanged(tmp_path):
    """Steps 0 and 3 of each 7-step epoch (N=3, with 2 micro-batches a step: the same global
    batches as N=3 at batch 8) measure accuracy; every step's loss counts as before."""
    from trainyard import TrainingHooks
    from trainyard.engine.task import IGNORE_INDEX, prepare_targets

    class Record(TrainingHooks):
        def __init__(self):
            self.steps = {}

        def on_batch_end(self, trainer, batch, outputs):
            targets = prepare_targets("language_modeling", batch, None)
            valid = targets != IGNORE_INDEX
            hits = int(((outputs["logits"].argmax(-1) == targets) & valid).sum())
            step = (trainer.state.epoch, (trainer.state.batch_in_epoch - 1) // 2)
            hit, count = self.steps.get(step, (0, 0))
            self.steps[step] = (hit + hits, count + int(valid.sum()))

    every, _ = run(tmp_path / "every", train_metrics_every_n_steps=1, batch_size=2, gradient_accumulation_steps=2)
    record = Record()
    sampled, _ = run(tmp_path / "sampled", hooks=[record], train_metrics_every_n_steps=3, batch_size=2, gradient_accumulation_steps=2)
    assert sampled["loss_history"] == every["loss_history"]  # measuring is not training: the same run, bit for bit
    for key in ("train/loss", "val/loss", "val/accuracy"):
        assert sampled["metrics_summary"][key].tolist() == every["metrics_summary"][key].tolist()
    for epoch, accuracy in zip(sampled["metrics_summary"]["epoch"], sampled["metrics_summary"]["train/accuracy"]):
        measured = [record.steps[(epoch, s)] for s in range(0, 7, 3)]  # steps 0, 3, 6 of the epoch
        assert accuracy == pytest.approx(sum(h for h, _ in measured) / sum(c for _, c in measured), rel=1e-9)
    assert sampled["metrics_summary"]["train/accuracy"].tolist() != every["metrics_summary"]["train/accuracy"].tolist()


def test_a_run_stopped_mid_epoch_resumes_with_the_same_sampled_training_accuracy(tmp_path):
    whole, _ = run(tmp_path / "whole", train_metrics_every_n_steps=2)
    run(tmp_path / "cut", hooks=StopAt(2, 3), train_metrics_every_n_steps=2)
    resumed, _ = run(tmp_path / "cut", resume_from=str(tmp_path / "cut"), train_metrics_every_n_steps=2)
    assert resumed["metrics_summary"]["train/accuracy"].tolist() == whole["metrics_summary"]["train/accuracy"].tolist()
