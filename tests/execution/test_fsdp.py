"""FSDP2 in Ray Train workers: the losses of DDP, sharded checkpoints, resharding on resume."""

import shutil

import pytest
import torch
from trainyard import Trainer, TrainingConfig
from trainyard.engine import checkpoint as ck
from trainyard.models import GPT

from tests.execution.hooks import FailOnce, StopAt
from tests.helpers import VOCAB, lm_samples

pytestmark = pytest.mark.slow

CONFIG = {"vocab_size": VOCAB, "max_seq_len": 8, "d_model": 16, "n_layers": 2, "n_heads": 2}
DATA, VAL = lm_samples(32), lm_samples(8, seed=4)


def gpt():
    return GPT(CONFIG)


def settings(**overrides):
    # Accumulation and a clip that bites: both must act on the whole (sharded) gradient.
    base = dict(learning_rate=1e-2, batch_size=2, gradient_accumulation_steps=2, max_grad_norm=0.5, epochs=3, random_seed=3)
    return TrainingConfig(**{**base, **overrides})


def run_config(tmp_path, name=None, max_failures=0, num_to_keep=None):
    import ray.train

    return ray.train.RunConfig(
        name=name, storage_path=str(tmp_path / "storage"), failure_config=ray.train.FailureConfig(max_failures=max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=num_to_keep),
    )


def epoch_losses(results):
    return results["metrics_summary"][["train/loss", "val/loss"]].values.ravel().tolist()


@pytest.fixture(scope="module")
def ddp(ray_session, tmp_path_factory):
    trainer = Trainer(gpt, CONFIG, settings(export_bundle=True), scaling=2, run_config=run_config(tmp_path_factory.mktemp("ddp")))
    return trainer, trainer.train(DATA, VAL)


@pytest.fixture(scope="module")
def fsdp(ray_session, tmp_path_factory):
    """The same run with FSDP (its every epoch's sharded checkpoint kept; tests that break
    one work on a copy)."""
    trainer = Trainer(gpt, CONFIG, settings(parallelism="fsdp", export_bundle=True), scaling=2, run_config=run_config(tmp_path_factory.mktemp("fsdp")))
    return trainer, trainer.train(DATA, VAL)


def epoch_checkpoint(results, epoch: int) -> str:
    (path,) = ck.Path(results["run_dir"]).glob(f"checkpoint_e{epoch:04d}_b*")
    return str(path)


def test_fsdp_on_two_workers_equals_ddp_and_writes_sharded_checkpoints(ddp, fsdp):
    ddp_trainer, ddp_results = ddp
    trainer, results = fsdp
    assert set(ddp_results) <= set(results)
    assert epoch_losses(results) == pytest.approx(epoch_losses(ddp_results), abs=1e-5)
    assert results["loss_history"] == pytest.approx(ddp_results["loss_history"], abs=1e-5)
    assert results["grad_norm_history"] == pytest.approx(ddp_results["grad_norm_history"], abs=1e-5)  # the global norm
    # Every rank wrote its shard into one checkpoint, and the marker covers them all.
    files = set(ck.verify(ck.Path(results["checkpoint_path"]))["files"])
    assert {".metadata", "__0_0.distcp", "__1_0.distcp", "state.pt", "trainer_state.json"} <= files
    assert "model.pt" not in files
    # The driver holds the whole trained model, and exported it.
    for name, value in ddp_trainer.model.state_dict().items():
        got = trainer.model.state_dict()[name]
        assert torch.allclose(got, value, atol=1e-4), f"{name}: max diff {(got - value).abs().max()}"  # reduce-scatter vs all-reduce order
    # Either way the bundle is made once, by the driver, in the run's directory (a DDP worker's
    # own bundle went into its temporary staging folder, deleted with it).
    for run_trainer, run_results in (ddp, fsdp):
        assert ck.Path(run_results["export_path"]) == ck.Path(run_results["run_dir"]) / "export"
        exported = torch.load(ck.Path(run_results["export_path"]) / "model.pt", weights_only=True)
        assert all(torch.equal(exported[k], v) for k, v in run_trainer.model.state_dict().items())


def test_a_killed_worker_and_a_named_rerun_give_the_uninterrupted_losses(ddp, tmp_path):
    _, ddp_results = ddp
    fsdp = settings(parallelism="fsdp", checkpoint_every_n_steps=2)
    hook = FailOnce(str(tmp_path / "killed"), rank=1, epoch=2, step=6)  # 4 steps an epoch: mid-epoch 2
    results = Trainer(gpt, CONFIG, fsdp, hooks=hook, scaling=2, run_config=run_config(tmp_path, max_failures=1)).train(DATA, VAL)
    assert (tmp_path / "killed").exists()
    assert epoch_losses(results) == pytest.approx(epoch_losses(ddp_results), abs=1e-6)

    hook = FailOnce(str(tmp_path / "raised"), rank=0, epoch=3, step=10, how="raise")
    with pytest.raises(Exception, match="boom"):
        Trainer(gpt, CONFIG, fsdp, hooks=hook, scaling=2, run_config=run_config(tmp_path, name="again")).train(DATA, VAL)
    results = Trainer(gpt, CONFIG, fsdp, hooks=hook, scaling=2, run_config=run_config(tmp_path, name="again")).train(DATA, VAL)
    assert epoch_losses(results) == pytest.approx(epoch_losses(ddp_results), abs=1e-6)


@pytest.mark.parametrize("parallelism", ["ddp", "fsdp"])
def test_a_stop_mid_window_on_two_workers_resumes_exactly(ddp, tmp_path, parallelism):
    """Each rank's own sums (the epoch so far, the cut window) and gradients so far are saved:
    sharded with FSDP, averaged early with DDP (each rank holds only its own until the
    window's last micro-batch)."""
    _, ddp_results = ddp
    cfg = settings(parallelism=parallelism)
    stopped = Trainer(gpt, CONFIG, cfg, hooks=StopAt(2, 3), scaling=2, run_config=run_config(tmp_path, name="run")).train(DATA, VAL)
    assert stopped["checkpoint_path"].endswith("checkpoint_e0002_b0000003")  # inside the second window of epoch 2
    ranks = ck.load(stopped["checkpoint_path"]).state["ranks"]
    assert len(ranks) == 2 and ranks[0]["window"]["loss"] != ranks[1]["window"]["loss"]
    resumed = Trainer(gpt, CONFIG, cfg, scaling=2, run_config=run_config(tmp_path / "again")).train(
        DATA, VAL, resume_from=str(tmp_path / "storage" / "run"))
    assert epoch_losses(resumed) == pytest.approx(epoch_losses(ddp_results), abs=1e-6)
    assert resumed["loss_history"] == pytest.approx(ddp_results["loss_history"], abs=1e-6)


def test_a_sharded_checkpoint_resumes_on_one_or_three_workers_like_ddp(ddp, fsdp, tmp_path):
    first = {"ddp": epoch_checkpoint(ddp[1], 1), "fsdp": epoch_checkpoint(fsdp[1], 1)}
    assert "model.pt" in ck.verify(ck.Path(first["ddp"]))["files"] and "model.pt" not in ck.verify(ck.Path(first["fsdp"]))["files"]
    for workers in (1, 3):
        resumed = {}
        for parallelism in ("ddp", "fsdp"):
            if workers == 1 and parallelism == "ddp":  # the reference for one worker: this process (world size 1 either way)
                trainer = Trainer(gpt, CONFIG, settings(epochs=2, checkpoint_dir=str(tmp_path / "local")))
            else:
                trainer = Trainer(gpt, CONFIG, settings(parallelism=parallelism, epochs=2), scaling=workers,
                                  run_config=run_config(tmp_path / f"{parallelism}{workers}"))
            resumed[parallelism] = trainer.train(DATA, VAL, resume_from=first[parallelism])
        assert list(resumed["fsdp"]["metrics_summary"]["epoch"]) == [1, 2]  # epoch 1 restored, epoch 2 trained
        assert epoch_losses(resumed["fsdp"]) == pytest.approx(epoch_losses(resumed["ddp"]), abs=1e-5), f"{workers} workers"


def test_a_truncated_or_missing_shard_is_refused_and_resuming_falls_back(fsdp, tmp_path):
    _, results = fsdp
    run_dir = tmp_path / "run"
    shutil.copytree(results["run_dir"], run_dir)
    newest = run_dir / results["checkpoint_path"].rsplit("/", 1)[-1]
    missing = tmp_path / "missing"
    shutil.copytree(newest, missing)
    (missing / "__0_0.distcp").unlink()
    with pytest.raises(ck.CheckpointError, match="file __0_0.distcp is missing"):
        ck.verify(missing)
    shard = newest / "__1_0.distcp"
    shard.write_bytes(shard.read_bytes()[:-7])
    with pytest.raises(ck.CheckpointError, match=r"__1_0.distcp is truncated"):
        ck.verify(newest)
    # Resuming from the run directory skips the bad epoch-3 checkpoint for the epoch-2 one.
    fourth = settings(parallelism="fsdp", epochs=4)
    again = Trainer(gpt, CONFIG, fourth, scaling=2, run_config=run_config(tmp_path / "again")).train(DATA, VAL, resume_from=str(run_dir))
    assert list(again["metrics_summary"]["epoch"]) == [1, 2, 3, 4]
    assert list(again["metrics_summary"]["train/loss"][:2]) == pytest.approx(list(results["metrics_summary"]["train/loss"][:2]))
    assert again["metrics_summary"]["train/loss"][2] != pytest.approx(results["metrics_summary"]["train/loss"][2], abs=1e-9)  # epoch 3 trained again, on a longer schedule


def test_fsdp_needs_workers(ray_session):
    from trainyard.hpo import sweep
    from trainyard.job_queue import JobConfig

    with pytest.raises(ValueError, match="pass scaling=N to the Trainer"):
        Trainer(gpt, CONFIG, settings(parallelism="fsdp")).train(DATA)
    with pytest.raises(ValueError, match="set workers_per_trial >= 2"):
        sweep(lambda: gpt(), CONFIG, DATA, VAL, space={"params": {"learning_rate": {"loguniform": [1e-3, 1e-2]}}},
              training_config=settings(parallelism="fsdp"))
    with pytest.raises(ValueError, match="set num_workers >= 2"):
        JobConfig(model_factory=gpt, train_data=DATA, training_config=settings(parallelism="fsdp"))
