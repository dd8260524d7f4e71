"""The new-API examples of seeds/000_58747ee384e977e5.txt, run as a user would.

Imports are the trainyard names; the legacy import paths of the same examples are tested
with the compatibility layer. `MyTransformerModel` is the user's own model in the seed; a
small one stands in. Data is smaller than the seed's where noted, to keep CI fast.
"""

from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import TensorDataset
from trainyard import TaskSpec, Trainer, TrainingConfig, TrainingHooks

from tests.compat.models import MyTransformerModel

RESULT_KEYS = ["loss_history", "final_loss", "final_perplexity", "training_time", "metrics_summary", "best_epoch", "grad_norm_history", "amp_enabled"]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default checkpoints/ go under the test's own folder


def _data(n=12, vocab=50257, length=16):
    return [torch.randint(0, vocab, (length,)) for _ in range(n)]


@pytest.fixture
def setup():
    config = SimpleNamespace(vocab_size=50257, d_model=768)
    model = MyTransformerModel(config)
    train_dataset = TensorDataset(torch.stack(_data()))
    val_dataset = TensorDataset(torch.stack(_data(4)))
    task_spec = TaskSpec(name="language_modeling", modality="text")
    return model, config, train_dataset, val_dataset, task_spec


def test_quick_start_after(setup):
    model, config, train_dataset, val_dataset, task_spec = setup
    training_config = TrainingConfig(learning_rate=5e-5, batch_size=4, epochs=2, max_grad_norm=1.0, wandb_project=None)
    trainer = Trainer(model=model, config=config, training_config=training_config, task_spec=task_spec)
    results = trainer.train(train_data=train_dataset, val_data=val_dataset)
    print(f"Final loss: {results['final_loss']:.4f}")
    print(f"Training time: {results['training_time']:.1f}s")


@pytest.mark.slow
def test_example_1_at_the_seeds_full_size():
    config = SimpleNamespace(vocab_size=50257, d_model=768)
    model = MyTransformerModel(config)
    train_data = [torch.randint(0, 50257, (128,)) for _ in range(100)]
    train_dataset = TensorDataset(torch.stack(train_data))
    val_dataset = TensorDataset(torch.stack([torch.randint(0, 50257, (128,)) for _ in range(8)]))
    training_config = TrainingConfig(learning_rate=5e-5, batch_size=4, epochs=3)
    task_spec = TaskSpec(name="language_modeling", modality="text")
    trainer = Trainer(model, config, training_config, task_spec)
    results = trainer.train(train_dataset, val_dataset)
    print(f"Loss: {results['final_loss']}")
    assert len(results["loss_history"]) == 3 * 25


def test_example_2_amp_and_accumulation(setup):
    model, config, train_dataset, val_dataset, task_spec = setup
    training_config = TrainingConfig(learning_rate=2e-5, batch_size=8, epochs=2, use_amp=True, gradient_accumulation_steps=4, max_grad_norm=1.0)
    trainer = Trainer(model, config, training_config, task_spec)
    results = trainer.train(train_dataset, val_dataset)
    assert results["amp_enabled"] is True


@pytest.mark.slow
def test_example_3_wandb(setup, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    model, config, train_dataset, val_dataset, task_spec = setup
    import wandb

    wandb.teardown()  # fresh process-wide settings, so WANDB_DIR above applies
    wandb.init(project="my-project", name="my-experiment")
    try:
        training_config = TrainingConfig(learning_rate=5e-5, epochs=2, wandb_project="my-project")
        trainer = Trainer(model, config, training_config, task_spec)
        results = trainer.train(train_dataset, val_dataset)
    finally:
        wandb.finish()
    assert results["final_loss"] > 0


@pytest.mark.parametrize("example", [4, 5])
def test_examples_4_and_5_optuna_objective(setup, example):
    import optuna

    model, config, train_dataset, val_dataset, task_spec = setup
    model_factory = lambda: MyTransformerModel(config)  # noqa: E731

    def objective(trial):
        lr = trial.suggest_loguniform("learning_rate", 1e-5, 1e-3)
        batch_size = trial.suggest_categorical("batch_size", [2, 4, 8, 16] if example == 5 else [4, 8, 16])
        weight_decay = trial.suggest_loguniform("weight_decay", 1e-6, 1e-2)
        extra = {}
        if example == 5:
            warmup_pct = trial.suggest_float("warmup_pct", 0.0, 0.2)
            extra["warmup_steps"] = int(warmup_pct * 1000)
        training_config = TrainingConfig(learning_rate=lr, batch_size=batch_size, weight_decay=weight_decay, epochs=1, **extra)
        trainer = Trainer(model_factory(), config, training_config, task_spec)
        results = trainer.train(train_dataset, val_dataset)
        return results["final_loss"]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize")
    with pytest.warns(Warning):  # Optuna's own deprecation of suggest_loguniform
        study.optimize(objective, n_trials=2)
    print(f"Best LR: {study.best_params['learning_rate']}")
    assert len(study.trials) == 2


def test_result_format_compatibility(setup):
    model, config, train_dataset, val_dataset, task_spec = setup
    results = Trainer(model, config, TrainingConfig(epochs=2), task_spec).train(train_dataset, val_dataset)
    for key in RESULT_KEYS:
        assert key in results
    assert isinstance(results["loss_history"], list) and isinstance(results["final_loss"], float)
    assert isinstance(results["best_epoch"], int) and isinstance(results["amp_enabled"], bool)
    print(f"Best epoch: {results['best_epoch']}")
    metrics_df = results["metrics_summary"]
    print(metrics_df[["epoch", "train/loss", "val/loss"]])


def test_feature_1_checkpointing_and_resumption(setup):
    model, config, train_dataset, val_dataset, task_spec = setup
    training_config = TrainingConfig(epochs=2)
    trainer = Trainer(model, config, training_config, task_spec)
    results = trainer.train(train_dataset, val_dataset)
    checkpoint_path = results["checkpoint_path"]
    trainer2 = Trainer(model, config, training_config, task_spec)
    results2 = trainer2.train(train_dataset, val_dataset, resume_from=checkpoint_path)
    assert results2["loss_history"] == results["loss_history"]  # already finished: nothing re-trained


def test_feature_2_hooks(setup, capsys):
    model, config, train_dataset, val_dataset, task_spec = setup

    class CustomHooks(TrainingHooks):
        def on_train_begin(self, trainer, train_dataset, val_dataset):
            print("Training starting!")

        def on_epoch_begin(self, trainer, epoch):
            print(f"Epoch {epoch} starting")

        def on_batch_end(self, trainer, batch, outputs):
            pass

    hooks = CustomHooks()
    trainer = Trainer(model, config, TrainingConfig(epochs=2), task_spec, hooks=hooks)
    trainer.train(train_dataset, val_dataset)
    assert "Training starting!\nEpoch 1 starting\nEpoch 2 starting" in capsys.readouterr().out


@pytest.mark.slow
def test_feature_5_torch_compile(setup):
    model, config, train_dataset, val_dataset, task_spec = setup
    training_config = TrainingConfig(learning_rate=5e-5, epochs=2, compile_mode="default")
    trainer = Trainer(model, config, training_config, task_spec)
    results = trainer.train(train_dataset, val_dataset)
    assert len(results["loss_history"]) == 6


def test_data_formats_old_list_and_new_tensor_dataset(setup):
    model, config, _, _, task_spec = setup
    train_data = _data(8)
    results = Trainer(model, config, TrainingConfig(epochs=1), task_spec).train(train_data)
    train_tensors = torch.stack(train_data)
    results2 = Trainer(model, config, TrainingConfig(epochs=1), task_spec).train(TensorDataset(train_tensors))
    assert len(results["loss_history"]) == len(results2["loss_history"]) == 2


def test_data_formats_hugging_face_dataset(setup):
    datasets = pytest.importorskip("datasets")
    model, config, _, _, task_spec = setup
    ids = [s.tolist() for s in _data(8)]
    train_dataset = datasets.Dataset.from_dict({"input_ids": ids, "labels": ids})
    results = Trainer(model, config, TrainingConfig(epochs=1), task_spec).train(train_dataset)
    assert results["final_loss"] > 0


def test_troubleshooting_1_pad_token_id(setup):
    model, config, _, _, _ = setup
    ragged = [torch.randint(1, 100, (n,)) for n in (5, 9, 7, 6)]
    with pytest.raises(ValueError, match="pad_token_id"):
        Trainer(model, config, TrainingConfig(epochs=1)).train(ragged)
    config.pad_token_id = 0
    Trainer(model, config, TrainingConfig(epochs=1)).train(ragged)
    del config.pad_token_id
    task_spec = TaskSpec(name="language_modeling", modality="text", preprocessing_config={"pad_token_id": 0})
    Trainer(model, config, TrainingConfig(epochs=1), task_spec).train(ragged)


def test_troubleshooting_2_and_4_config(setup):
    training_config = TrainingConfig(learning_rate=5e-5, batch_size=4, epochs=10)
    assert training_config.epochs == 10
    with pytest.raises(TypeError, match="wandb_project"):
        TrainingConfig(use_wandb=True)
    assert TrainingConfig(wandb_project="my-project").wandb_project == "my-project"


def test_troubleshooting_3_and_5(setup):
    model, config, _, val_dataset, task_spec = setup
    train_data = _data(8)
    train_tensors = torch.stack(train_data)
    train_dataset = TensorDataset(train_tensors)
    trainer = Trainer(model, config, TrainingConfig(epochs=1), task_spec)
    results = trainer.train(train_dataset, val_dataset)
    print(results.keys())
    assert {"metrics_summary", "best_epoch", "final_loss", "checkpoint_path", "training_time"} <= set(results)
