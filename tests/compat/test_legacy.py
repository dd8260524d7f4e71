"""The old API of seeds/000_58747ee384e977e5.txt, through its old import paths, on trainyard."""

import sys
import warnings
from types import SimpleNamespace

import pytest
import torch
from trainyard.compat import disable_legacy_imports, enable_legacy_imports

from tests.compat.models import MyModel, MyTransformerModel


@pytest.fixture(autouse=True)
def legacy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    enable_legacy_imports()
    yield
    disable_legacy_imports()


@pytest.fixture
def setup():
    config = SimpleNamespace(vocab_size=50257, d_model=768)
    torch.manual_seed(0)
    model = MyTransformerModel(config)
    train_data = [torch.randint(0, 50257, (16,)) for _ in range(12)]
    return model, config, train_data


def test_quick_start_before_runs_and_warns_with_the_migration(setup):
    from utils.tier3_training_utilities import test_fine_tuning

    model, config, train_data = setup
    with pytest.warns(DeprecationWarning, match=r"test_fine_tuning\(\) is deprecated(.|\n)*TrainingConfig\(epochs=10"):
        results = test_fine_tuning(model=model, config=config, n_epochs=2, learning_rate=5e-5, batch_size=4, gradient_clip_norm=1.0)
    print(f"Final loss: {results['final_loss']:.4f}")
    print(f"Training time: {results['training_time']:.1f}s")
    assert len(results["metrics_summary"]) == 2  # synthetic data from config.vocab_size


def test_example_1_old_api_gives_the_new_apis_loss_history(setup):
    from utils.tier3_training_utilities import test_fine_tuning
    from utils.training.engine import Trainer
    from utils.training.task_spec import TaskSpec
    from utils.training.training_config import TrainingConfig

    _, config, train_data = setup
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old = test_fine_tuning(model=MyTransformerModel(config), config=config, train_data=train_data, n_epochs=3, learning_rate=5e-5, batch_size=4)
    torch.manual_seed(0)
    new = Trainer(MyTransformerModel(config), config, TrainingConfig(learning_rate=5e-5, batch_size=4, epochs=3),
                  TaskSpec(name="language_modeling", modality="text")).train(train_data)
    assert old["loss_history"] == new["loss_history"]
    print(f"Loss: {old['final_loss']}")


def test_example_2_amp_and_accumulation(setup):
    from utils.tier3_training_utilities import test_fine_tuning

    model, config, train_data = setup
    with pytest.warns(DeprecationWarning):
        results = test_fine_tuning(model=model, config=config, train_data=train_data, n_epochs=2, learning_rate=2e-5, batch_size=8,
                                   use_amp=True, gradient_accumulation_steps=4, gradient_clip_norm=1.0)
    assert results["amp_enabled"] is True and len(results["loss_history"]) == 2


@pytest.mark.slow
def test_example_3_use_wandb_logs_to_a_project(setup, monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    import wandb

    wandb.teardown()  # wandb keeps its settings (directory included) process-wide
    from trainyard.compat.legacy import LEGACY_WANDB_PROJECT, legacy_training_config
    from utils.tier3_training_utilities import test_fine_tuning

    assert legacy_training_config(use_wandb=True).wandb_project == LEGACY_WANDB_PROJECT
    model, config, train_data = setup
    with pytest.warns(DeprecationWarning):
        results = test_fine_tuning(model=model, config=config, train_data=train_data, n_epochs=1, use_wandb=True)
    assert list(tmp_path.glob("wandb/offline-run-*"))
    assert results["final_loss"] > 0


def test_every_old_parameter_maps_as_the_table_says():
    from trainyard.compat.legacy import legacy_training_config

    cfg = legacy_training_config(
        n_epochs=7, learning_rate=1e-4, batch_size=2, weight_decay=0.1, use_wandb=False, use_amp=True,
        gradient_accumulation_steps=3, gradient_clip_norm=0.5, random_seed=9, deterministic=True, use_lr_schedule=False,
    )
    assert (cfg.epochs, cfg.learning_rate, cfg.batch_size, cfg.weight_decay, cfg.wandb_project) == (7, 1e-4, 2, 0.1, None)
    assert (cfg.use_amp, cfg.gradient_accumulation_steps, cfg.max_grad_norm) == (True, 3, 0.5)
    assert (cfg.random_seed, cfg.deterministic, cfg.use_lr_schedule) == (9, True, False)


def test_old_search_space_keys_become_a_trainyard_space():
    from trainyard.compat.legacy import legacy_search_space
    from trainyard.hpo import load_search_space

    space = legacy_search_space({"lr": (1e-5, 1e-3), "batch_size": [2, 4, 8, 16], "wd": (1e-6, 1e-2), "warmup": (0, 100)})
    assert space["params"] == {
        "learning_rate": {"loguniform": [1e-5, 1e-3]}, "batch_size": {"choice": [2, 4, 8, 16]},
        "weight_decay": {"loguniform": [1e-6, 1e-2]}, "warmup_steps": {"qrandint": [0, 100, 1]},
    }
    load_search_space(space)  # valid
    with pytest.raises(ValueError, match="not a legacy key"):
        legacy_search_space({"momentum": (0.8, 0.99)})


@pytest.mark.slow
@pytest.mark.parametrize("example", [4, 5])
def test_examples_4_and_5_hyperparameter_search(ray_session, setup, example):
    from utils.tier3_training_utilities import test_hyperparameter_search

    _, config, train_data = setup
    search_space = {"lr": (1e-5, 1e-3), "batch_size": [4, 8, 16], "wd": (1e-6, 1e-2)}
    if example == 5:
        search_space = {"lr": (1e-5, 1e-3), "batch_size": [2, 4, 8, 16], "wd": (1e-6, 1e-2), "warmup": (0, 100)}
    with pytest.warns(DeprecationWarning, match="test_hyperparameter_search"):
        results = test_hyperparameter_search(model_factory=lambda: MyModel(config), config=config, train_data=train_data,
                                             n_trials=4, search_space=search_space, n_epochs=1)
    print(f"Best LR: {results['best_params']['learning_rate']}")
    assert set(results["best_params"]) >= {"learning_rate", "batch_size", "weight_decay"}
    assert len(results["trials"]) == 4 and len(results["study"].trials) == 4
    assert results["best_value"] == pytest.approx(results["trials"]["train/loss"].min())


def test_feature_1_and_2_through_the_legacy_paths(setup, capsys):
    from utils.training.engine import Trainer
    from utils.training.engine.trainer import TrainingHooks
    from utils.training.training_config import TrainingConfig

    model, config, train_data = setup

    class CustomHooks(TrainingHooks):
        def on_epoch_begin(self, trainer, epoch):
            print(f"Epoch {epoch} starting")

    results = Trainer(model, config, TrainingConfig(epochs=1), hooks=CustomHooks()).train(train_data)
    results2 = Trainer(model, config, TrainingConfig(epochs=2)).train(train_data, resume_from=results["checkpoint_path"])
    assert "Epoch 1 starting" in capsys.readouterr().out and len(results2["metrics_summary"]) == 2


def test_a_users_own_utils_package_wins(tmp_path, monkeypatch):
    (tmp_path / "utils").mkdir()
    (tmp_path / "utils" / "__init__.py").write_text("MINE = True\n")
    (tmp_path / "utils" / "training.py").write_text("OWN_TRAINING = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == "utils" or m.startswith("utils.")]:
        monkeypatch.delitem(sys.modules, name)
    try:
        import utils
        import utils.training

        assert utils.MINE and utils.training.OWN_TRAINING
    finally:  # the user's modules must not shadow the legacy paths in later tests
        for name in [m for m in sys.modules if m == "utils" or m.startswith("utils.")]:
            del sys.modules[name]


def test_without_enabling_the_legacy_paths_do_not_exist():
    disable_legacy_imports()
    with pytest.raises(ModuleNotFoundError):
        import utils.tier3_training_utilities  # noqa: F401


def test_seed_004_data_paths_resolve_and_deprecated_ones_name_the_new_path():
    from data.loaders import load_dataset
    from training.core.cv_utils import create_kfold_splits

    assert callable(load_dataset) and callable(create_kfold_splits)
    for old, new in (("training.cv_utils", "training.core.cv_utils"), ("training.data", "data.loaders")):
        sys.modules.pop(old, None)
        with pytest.warns(DeprecationWarning, match=f"Importing from '{old}' is deprecated. Please use '{new}' instead"):
            __import__(old)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new paths do not warn
        sys.modules.pop("data.loaders", None)
        __import__("data.loaders")
