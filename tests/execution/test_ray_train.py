"""The engine loop in Ray Train workers: same results, Ray checkpoints, fault tolerance."""

import json
from types import SimpleNamespace

import pytest
import torch
from trainyard import Trainer, TrainingConfig

from tests.execution.hooks import FailOnce, RecordRows, RecordSteps, SigtermAt, Unpicklable
from tests.helpers import VOCAB, lm_factory, lm_samples

pytestmark = pytest.mark.slow

CONFIG = SimpleNamespace(vocab_size=VOCAB)
DATA, VAL = lm_samples(32), lm_samples(8, seed=4)


# The training options ride along in every run here (the in-process one they are compared
# with too): an optimizer by name, a schedule, evaluations inside epochs and early stopping's
# state, through DDP, a worker's restart and a new driver's resume.
OPTIONS = dict(optimizer="sgd", optimizer_kwargs={"momentum": 0.9}, lr_schedule="linear", eval_every_n_steps=2,
               early_stopping_metric="val/loss", early_stopping_patience=50)
NO_VALIDATION = dict(eval_every_n_steps=None, early_stopping_metric=None, early_stopping_patience=3)


def settings(**overrides):
    base = dict(learning_rate=1e-2, batch_size=4, epochs=3, random_seed=3, **OPTIONS)
    base.update(overrides)
    return TrainingConfig(**base)


def epoch_losses(results):
    return results["metrics_summary"][["train/loss", "val/loss"]].values.ravel().tolist()


def run_config(tmp_path, name=None, max_failures=0, num_to_keep=None):
    import ray.train

    return ray.train.RunConfig(
        name=name,
        storage_path=str(tmp_path / "storage"),
        failure_config=ray.train.FailureConfig(max_failures=max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=num_to_keep),
    )


@pytest.fixture(scope="module")
def in_process_batch_8(tmp_path_factory):
    ck = tmp_path_factory.mktemp("local")
    return Trainer(lm_factory(dropout=0.0), CONFIG, settings(batch_size=8, checkpoint_dir=str(ck))).train(DATA, VAL)


def test_two_workers_equal_one_process_with_the_global_batch(ray_session, in_process_batch_8, tmp_path):
    import ray.train

    results = Trainer(
        lm_factory(dropout=0.0), CONFIG, settings(batch_size=4), scaling=ray.train.ScalingConfig(num_workers=2),
        run_config=run_config(tmp_path, num_to_keep=2),
    ).train(DATA, VAL)
    assert set(in_process_batch_8) <= set(results)
    assert epoch_losses(results) == pytest.approx(epoch_losses(in_process_batch_8), abs=1e-6)
    assert results["loss_history"] == pytest.approx(in_process_batch_8["loss_history"], abs=1e-6)
    assert [e["global_step"] for e in results["eval_history"]] == [2, 4, 6, 8, 10, 12]  # every 2 steps; epochs end at 4, 8, 12
    val = lambda r: [e["val/loss"] for e in r["eval_history"]]  # noqa: E731
    assert val(results) == pytest.approx(val(in_process_batch_8), abs=1e-6)
    # Checkpoints live in storage_path under the run, pruned to num_to_keep by Ray.
    run_dir = tmp_path / "storage" / results["run_dir"].rsplit("/", 1)[-1]
    assert results["checkpoint_path"].startswith(str(run_dir))
    assert sorted(p.name for p in run_dir.glob("checkpoint_e*")) == ["checkpoint_e0002_b0000004", "checkpoint_e0003_b0000004"]
    # Throughput is the whole job's: both workers' tokens (32 samples x 7 targets) per epoch.
    for _, row in results["metrics_summary"].iterrows():
        assert row["throughput/tokens_per_s"] * row["time/train_s"] == pytest.approx(32 * 7)
        assert row["throughput/samples_per_s"] * row["time/train_s"] == pytest.approx(32)


def test_worker_killed_mid_epoch_restarts_from_the_last_checkpoint(ray_session, in_process_batch_8, tmp_path):
    hook = FailOnce(str(tmp_path / "marker"), rank=1, epoch=2, step=7)  # step 7 = 3rd of epoch 2
    results = Trainer(
        lm_factory(dropout=0.0), CONFIG, settings(checkpoint_every_n_steps=2), hooks=hook, scaling=2,
        run_config=run_config(tmp_path, max_failures=1),
    ).train(DATA, VAL)
    assert (tmp_path / "marker").exists(), "the failure happened"
    assert epoch_losses(results) == pytest.approx(epoch_losses(in_process_batch_8), abs=1e-6)
    assert len(results["loss_history"]) == 12


def test_a_worker_sent_sigterm_saves_at_the_next_step_and_ray_restarts_the_run_from_there(ray_session, in_process_batch_8, tmp_path):
    steps = tmp_path / "steps.jsonl"
    hooks = [SigtermAt(str(tmp_path / "marker"), rank=1, step=6), RecordSteps(str(steps))]  # step 6 = 2nd of epoch 2
    results = Trainer(
        lm_factory(dropout=0.0), CONFIG, settings(), hooks=hooks, scaling=2, run_config=run_config(tmp_path, max_failures=0),
    ).train(DATA, VAL)
    assert (tmp_path / "marker").exists(), "the SIGTERM was sent"
    # No failure budget (max_failures=0): Ray restarted it as a preemption. Step 7 was saved
    # (no periodic checkpoints here), so the restart went on at step 8: no step trained twice.
    trained = [json.loads(line)[0] for line in steps.read_text().splitlines()]
    assert trained == list(range(1, 13))
    assert epoch_losses(results) == pytest.approx(epoch_losses(in_process_batch_8), abs=1e-6)
    assert results["loss_history"] == pytest.approx(in_process_batch_8["loss_history"], abs=1e-6)


def test_exhausted_failure_budget_raises_with_the_worker_traceback(ray_session, tmp_path):
    hook = FailOnce(str(tmp_path / "marker"), rank=1, epoch=1, step=2, how="raise")
    with pytest.raises(Exception) as info:
        Trainer(lm_factory(), CONFIG, settings(**NO_VALIDATION), hooks=hook, scaling=2, run_config=run_config(tmp_path)).train(DATA)
    text = str(info.value)
    assert "boom from rank 1 at step 2" in text and "Traceback" in text and "on_batch_end" in text


@pytest.mark.parametrize("recorded", [True, False], ids=["recorded-by-ray", "only-in-the-folder"])
def test_rerunning_a_named_run_resumes_from_its_latest_checkpoint(ray_session, in_process_batch_8, tmp_path, recorded):
    hook = FailOnce(str(tmp_path / "marker"), rank=0, epoch=3, step=9, how="raise")
    with pytest.raises(Exception, match="boom"):
        Trainer(lm_factory(dropout=0.0), CONFIG, settings(), hooks=hook, scaling=2, run_config=run_config(tmp_path, name="rerun")).train(DATA, VAL)
    if not recorded:  # a driver stopped after a checkpoint's upload, before Ray recorded it
        (tmp_path / "storage" / "rerun" / "checkpoint_manager_snapshot.json").unlink()
    # A new driver, same RunConfig(name, storage_path): the epoch-2 checkpoint, not a new start
    # (which wrote over the kept checkpoints). The rerun's hooks see only epoch 3.
    rows = tmp_path / "rows"
    rows.mkdir()
    hooks = [hook, RecordRows(str(rows))]
    results = Trainer(lm_factory(dropout=0.0), CONFIG, settings(), hooks=hooks, scaling=2, run_config=run_config(tmp_path, name="rerun")).train(DATA, VAL)
    assert {json.loads(line)[0] for f in rows.iterdir() for line in f.read_text().splitlines()} == {3}
    assert epoch_losses(results) == pytest.approx(epoch_losses(in_process_batch_8), abs=1e-6)
    assert [e["val/loss"] for e in results["eval_history"]] == pytest.approx([e["val/loss"] for e in in_process_batch_8["eval_history"]], abs=1e-6)
    assert results["run_dir"].endswith("rerun")


def test_resume_from_a_ray_checkpoint_and_weights_come_back_to_the_driver(ray_session, in_process_batch_8, tmp_path):
    import ray.train
    import torch

    hook = FailOnce(str(tmp_path / "marker"), rank=0, epoch=3, step=9, how="raise")
    with pytest.raises(Exception, match="boom"):
        Trainer(lm_factory(dropout=0.0), CONFIG, settings(), hooks=hook, scaling=2, run_config=run_config(tmp_path, name="first")).train(DATA, VAL)
    latest = sorted((tmp_path / "storage" / "first").glob("checkpoint_e*"))[-1]
    assert latest.name == "checkpoint_e0002_b0000004"
    # A different run (new name), told explicitly where to start.
    trainer = Trainer(lm_factory(dropout=0.0), CONFIG, settings(), scaling=2, run_config=run_config(tmp_path))
    results = trainer.train(DATA, VAL, resume_from=ray.train.Checkpoint.from_directory(str(latest)))
    assert epoch_losses(results) == pytest.approx(epoch_losses(in_process_batch_8), abs=1e-6)
    saved = torch.load(f"{results['checkpoint_path']}/model.pt", weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in trainer.model.state_dict().items())


def test_unpicklable_hooks_are_refused_before_ray_starts_work(ray_session):
    with pytest.raises(TypeError, match="hooks \\(Unpicklable\\) must be picklable to run inside Ray workers"):
        Trainer(lm_factory(), CONFIG, settings(**NO_VALIDATION), hooks=Unpicklable(), scaling=2).train(DATA)


def test_code_that_exists_only_in_this_process_is_refused_before_the_workers_start(ray_session, tmp_path):
    """A model class made in memory (a notebook's exec, a generated module) is pickled by
    name, and no Ray worker can import it: one line, before any worker starts."""
    import sys
    import types

    module = types.ModuleType("made_in_memory")
    exec("import torch\nclass Net(torch.nn.Linear):\n    def __init__(self):\n        super().__init__(4, 2)\n", module.__dict__)
    sys.modules["made_in_memory"] = module
    try:
        trainer = Trainer(module.Net, None, TrainingConfig(epochs=1, batch_size=2), scaling=2)
        with pytest.raises(ValueError, match="refer to module 'made_in_memory', which exists only in this process"):
            trainer.train([(torch.zeros(4), torch.tensor(0))] * 4)
    finally:
        del sys.modules["made_in_memory"]


def test_a_joined_cluster_is_asked_whether_it_can_import_the_users_modules(ray_session):
    """On a cluster this process joined, its workers are asked for the modules the run's code
    comes from (here the test session's Ray stands in: it lacks a module made in memory)."""
    import sys
    import types

    from trainyard.execution import ray_env
    from trainyard.execution.remote import dumps

    module = types.ModuleType("only_here")
    exec("def factory():\n    return None\n", module.__dict__)
    module.__file__ = "/nowhere/only_here.py"  # as if on this machine's disk, not the cluster's
    sys.modules["only_here"] = module
    ray_env._JOINED[:] = ["the Ray cluster at 10.0.0.1:6379"]
    try:
        with pytest.raises(ValueError, match=r"the Ray cluster at 10.0.0.1:6379 cannot import module 'only_here'.*ray job submit --working-dir"):
            ray_env.check_importable("the model factory", dumps(module.factory))
        ray_env.check_importable("the model factory", dumps(lm_factory()))  # tests.helpers: the workers import it
    finally:
        ray_env._JOINED[:] = []
        del sys.modules["only_here"]


DATA36 = lm_samples(36)  # 36 rows: every count of 1, 2 or 3 workers trains them all, each epoch


def _rows(folder, epoch):
    return sorted(tuple(row) for f in folder.iterdir() for e, _, row in map(json.loads, f.read_text().splitlines()) if e == epoch)


@pytest.fixture(scope="module")
def in_process_global_12(tmp_path_factory):
    ck = tmp_path_factory.mktemp("global12")
    return Trainer(lm_factory(dropout=0.0), CONFIG, settings(batch_size=6, global_batch_size=12, checkpoint_dir=str(ck))).train(DATA36, VAL)


@pytest.mark.parametrize("workers", [1, 3])
def test_stopped_mid_epoch_on_two_workers_a_run_continues_on_another_count_with_the_samples_that_were_next(
        ray_session, in_process_global_12, tmp_path, workers):
    from tests.execution.hooks import StopAt

    first_rows, rest_rows = tmp_path / "first", tmp_path / "rest"
    first_rows.mkdir(), rest_rows.mkdir()
    first = Trainer(lm_factory(dropout=0.0), CONFIG, settings(batch_size=6), hooks=[StopAt(2, 1), RecordRows(str(first_rows))], scaling=2,
                    run_config=run_config(tmp_path, name="two")).train(DATA36, VAL)
    assert first["checkpoint_path"].endswith("checkpoint_e0002_b0000001")  # 12 samples a step: 6 on each of 2 workers
    again = dict(hooks=[RecordRows(str(rest_rows))], **({"scaling": 3, "run_config": run_config(tmp_path, name="three")} if workers == 3 else {}))
    if workers == 1:  # in this process
        again["training_config"] = settings(batch_size=6, checkpoint_dir=str(tmp_path / "one"))
    resumed = Trainer(lm_factory(dropout=0.0), CONFIG, again.pop("training_config", settings(batch_size=6)), **again).train(
        DATA36, VAL, resume_from=first["checkpoint_path"])
    assert epoch_losses(resumed) == pytest.approx(epoch_losses(in_process_global_12), abs=1e-5)
    assert len(resumed["loss_history"]) == 9  # 3 steps of 12 an epoch, whatever the count
    epoch_2 = _rows(first_rows, 2) + _rows(rest_rows, 2)
    assert sorted(epoch_2) == sorted(tuple(r.tolist()) for r in DATA36), "each sample once in the epoch the count changed"


def test_an_elastic_run_keeps_the_global_batch_of_its_largest_size(ray_session, tmp_path):
    ck = tmp_path / "local"
    whole = Trainer(lm_factory(dropout=0.0), CONFIG, settings(batch_size=4, global_batch_size=12, checkpoint_dir=str(ck))).train(DATA36, VAL)
    rows = tmp_path / "rows"
    rows.mkdir()
    results = Trainer(lm_factory(dropout=0.0), CONFIG, settings(batch_size=4), hooks=RecordRows(str(rows)), scaling=(1, 3),
                      run_config=run_config(tmp_path)).train(DATA36, VAL)
    assert sorted(p.name for p in rows.iterdir()) == ["rank0.jsonl", "rank1.jsonl", "rank2.jsonl"]  # the cluster holds all 3
    assert epoch_losses(results) == pytest.approx(epoch_losses(whole), abs=1e-5)  # 4 x 3 workers at most: 12 a step


def test_an_elastic_range_that_cannot_share_the_global_batch_is_refused_before_it_starts(ray_session, tmp_path):
    with pytest.raises(ValueError, match=r"global_batch_size 20 cannot be split evenly over 3 worker\(s\) .* multiple of 12 .* "
                                         r"\(an elastic run of 2 to 4 workers may run on any of them\)"):
        Trainer(lm_factory(), CONFIG, settings(batch_size=5), scaling=(2, 4), run_config=run_config(tmp_path)).train(DATA36, VAL)
    assert not (tmp_path / "storage").exists()
