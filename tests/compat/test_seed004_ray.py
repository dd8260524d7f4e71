"""seeds/004: the HPO sweep and final-training examples, end to end on the test session's Ray."""

import subprocess
import warnings

import pytest
from trainyard.compat import disable_legacy_imports, enable_legacy_imports

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture
def legacy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    enable_legacy_imports()
    yield
    disable_legacy_imports()


def test_hpo_sweep_then_final_training_with_lineage(ray_session, legacy, tmp_path):
    from trainyard.data.addition import addition_splits

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from hpo import create_search_space  # the deprecated path works too
    from training.execution import execute_final_training, extract_lineage_from_best_model
    from training.hpo import extract_best_config_from_study, run_local_hpo_sweep

    hpo_config = {"search_space": {"learning_rate": {"loguniform": [1e-3, 1e-2]}, "model.d_model": {"choice": [16, 32]}},
                  "metric": "val/loss", "direction": "minimize"}
    search_space = create_search_space(hpo_config)
    assert search_space.mode == "min" and [p.name for p in search_space.params] == ["learning_rate", "model.d_model"]
    dataset = addition_splits(train_size=64, val_size=16, digits=2)
    config = {"model": {"n_layers": 1, "n_heads": 2}, "data": {"name": "addition", "digits": 2},
              "training": {"epochs": 2, "batch_size": 16}}
    study = run_local_hpo_sweep("gpt", search_space, dataset, config=config, n_trials=2, output_dir=tmp_path / "sweeps",
                                name="s1", scheduler="none")
    assert len(study.trials) == 2

    best_config = extract_best_config_from_study(study)
    best = study.best_trial
    assert best_config["training"]["learning_rate"] == best.params["learning_rate"]
    assert best_config["model"] == {"name": "gpt", "n_layers": 1, "n_heads": 2, "d_model": best.params["model.d_model"]}
    source = best_config["source"]
    assert source["sweep"] == "s1" and source["value"] == best.value and source["params"] == best.params
    trials = (tmp_path / "sweeps" / "s1" / "trials.csv").read_text()
    assert source["trial_id"] in trials

    job = execute_final_training(best_config, dataset, workers=2, output_dir=tmp_path / "final", name="final-1")
    assert len(job.results["metrics_summary"]) == 2 and job.checkpoint_path
    lineage = extract_lineage_from_best_model(job)
    assert lineage["sweep"] == "s1" and lineage["trial_id"] == source["trial_id"] and lineage["params"] == best.params
    assert lineage["checkpoint"] == job.checkpoint_path
    assert lineage["data_fingerprint"] == lineage["sweep_data_fingerprint"] is not None  # trained on the sweep's data
    assert lineage["code_version"]["git_commit"] is None  # the working directory (tmp_path) is no git repo
    assert extract_lineage_from_best_model(job.run_dir) == lineage  # kept beside the run, as JSON


def test_code_version_names_the_commit():
    from trainyard.pipeline.final import code_version

    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    version = code_version(ROOT)
    assert version["git_commit"] == (commit or None)
    assert isinstance(version["git_dirty"], bool) or not commit


def test_create_run_context_detects_ray_train_and_tune(ray_session):
    import ray.train
    from ray import tune  # noqa: I001
    from ray.train.torch import TorchTrainer
    from trainyard.execution.contexts import create_run_context

    assert type(create_run_context()).__name__ == "LocalContext"

    def in_worker(_config):
        return type(create_run_context()).__name__

    result = TorchTrainer(in_worker, scaling_config=ray.train.ScalingConfig(num_workers=1)).fit()
    assert result.return_value == "RayTrainContext"

    def in_trial(_config):
        tune.report({"kind": type(create_run_context()).__name__})

    grid = tune.Tuner(in_trial, run_config=tune.RunConfig(verbose=0)).fit()
    assert grid[0].metrics["kind"] == "TuneTrialContext"


def test_fingerprint_follows_the_content():
    import torch
    from trainyard.data.fingerprint import fingerprint

    a = {"input_ids": torch.arange(12).reshape(3, 4)}
    b = {"input_ids": torch.arange(12).reshape(3, 4)}
    assert fingerprint(a) == fingerprint(b)
    b["input_ids"][1, 2] = 0
    assert fingerprint(a) != fingerprint(b)
    assert fingerprint([1, 2]) != fingerprint([[1, 2]])
