"""Mistakes a sweep can know before Ray starts: refused then, naming the fix."""

import pytest
from trainyard import TrainingConfig
from trainyard.hpo import sweep
from trainyard.models import GPT

from tests.helpers import VOCAB, lm_samples

CONFIG = {"vocab_size": VOCAB, "max_seq_len": 8, "d_model": 16, "n_layers": 1, "n_heads": 2}


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the sweep started Ray before refusing")

    monkeypatch.setattr("trainyard.hpo.runner.ensure_ray", refuse)  # the sweep's first step towards Ray


def run(params, metric="val/loss", **kwargs):
    sweep(lambda model_config: GPT(model_config), CONFIG, lm_samples(8), lm_samples(4, seed=2),
          space={"metric": metric, "params": params}, training_config=TrainingConfig(epochs=1), **kwargs)


def test_a_metric_the_task_does_not_report_is_refused_with_the_columns():
    with pytest.raises(ValueError, match=r"metric 'val/acc' is not a column a language_modeling run reports; did you mean 'val/accuracy'\?"):
        run({"learning_rate": {"loguniform": [1e-4, 1e-2]}}, metric="val/acc")
    with pytest.raises(ValueError, match=r"metric 'val/exact_match' is not a column a classification run reports"):
        run({"learning_rate": {"loguniform": [1e-4, 1e-2]}}, metric="val/exact_match", task_spec={"name": "classification"})


def test_a_model_value_the_model_rejects_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"parameter 'model.n_heads' = 3 is rejected by the model: ValueError: GPTConfig.d_model=16 is not divisible by n_heads=3"):
        run({"model.n_heads": {"choice": [2, 3, 4]}})


def test_a_model_that_cannot_be_built_on_the_meta_device_is_built_for_real():
    """A factory that reads weights (here: refuses the meta device) is not refused for it."""
    import torch

    def reads_weights(model_config):
        if torch.empty(0).device.type == "meta":
            raise NotImplementedError("Cannot copy out of meta tensor")
        return GPT(model_config)

    with pytest.raises(AssertionError, match="started Ray"):  # every check passed: the sweep went on to start Ray
        sweep(reads_weights, CONFIG, lm_samples(8), lm_samples(4, seed=2), training_config=TrainingConfig(epochs=1),
              space={"params": {"model.n_heads": {"choice": [2, 4]}}})
    with pytest.raises(ValueError, match=r"'model.n_heads' = 3 is rejected by the model: ValueError"):
        sweep(reads_weights, CONFIG, lm_samples(8), lm_samples(4, seed=2), training_config=TrainingConfig(epochs=1),
              space={"params": {"model.n_heads": {"choice": [2, 3]}}})


def test_resuming_a_sweep_folder_others_can_write_is_refused_before_ray(tmp_path):
    """Ray Tune unpickles a sweep folder's state when it resumes it: a folder others can
    write is refused (naming it and the opt-out); a new one is made owner-only."""
    import os
    import stat

    from trainyard._trust import SharedStorageError

    shared = tmp_path / "sweeps" / "team"
    shared.mkdir(parents=True)
    (shared / "tuner.pkl").write_bytes(b"planted")
    os.chmod(shared, 0o777)
    with pytest.raises(SharedStorageError, match=rf"the sweep folder {shared} is world-writable.*allow_shared_storage=True"):
        run({"learning_rate": {"loguniform": [1e-4, 1e-2]}}, storage_path=tmp_path / "sweeps", name="team")
    os.chmod(shared, 0o755)
    os.chmod(shared / "tuner.pkl", 0o666)
    with pytest.raises(SharedStorageError, match=rf"{shared / 'tuner.pkl'} is world-writable"):
        run({"learning_rate": {"loguniform": [1e-4, 1e-2]}}, storage_path=tmp_path / "sweeps", name="team")
    with pytest.raises(AssertionError, match="started Ray"):  # a new folder passes the check
        run({"learning_rate": {"loguniform": [1e-4, 1e-2]}}, storage_path=tmp_path / "sweeps", name="mine")
    assert stat.S_IMODE((tmp_path / "sweeps" / "mine").stat().st_mode) == 0o700


def test_a_sweep_name_that_is_a_path_is_refused_before_ray():
    with pytest.raises(ValueError, match=r"sweep name '\.\./up' must be one folder name"):
        run({"learning_rate": {"loguniform": [1e-4, 1e-2]}}, name="../up")


def test_searching_fsdp_with_one_worker_per_trial_is_refused_before_ray():
    with pytest.raises(ValueError, match=r"parallelism='fsdp' \(in training_config or the search space\) shards each trial's model across "
                                         r"workers: set workers_per_trial >= 2"):
        run({"parallelism": {"choice": ["ddp", "fsdp"]}})


@pytest.mark.parametrize("gpus", [-1, "half", float("nan")])
def test_a_trial_asking_for_negative_or_no_number_of_gpus_is_refused_before_ray(gpus):
    with pytest.raises(ValueError, match=r"resources_per_trial gpu=.* \(--gpus-per-trial\) must be a number >= 0"):
        run({"learning_rate": {"loguniform": [1e-4, 1e-2]}}, resources_per_trial={"cpu": 1, "gpu": gpus})
