"""The durable job queue (seeds/000 Feature 4): records in SQLite, each job a Ray Job on the session's head."""

import time
from types import SimpleNamespace

import pytest
import torch
from trainyard import TaskSpec, Trainer, TrainingConfig
from trainyard.compat import disable_legacy_imports, enable_legacy_imports

from tests.compat.models import MyTransformerModel as MyModel

pytestmark = pytest.mark.slow


def _data(n=24):
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 50, (12,), generator=g) for _ in range(n)]


def test_feature_4_example_runs_and_matches_a_direct_run(queue_cluster, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    enable_legacy_imports()
    try:
        from utils.training.job_queue import JobConfig, JobQueue
    finally:
        disable_legacy_imports()
    config = SimpleNamespace(vocab_size=50, d_model=16)
    train_dataset, val_dataset = _data(), _data(8)
    task_spec = TaskSpec(name="language_modeling")
    job_config = JobConfig(
        model_factory=lambda: MyModel(config), config=config, train_data=train_dataset, val_data=val_dataset,
        training_config=TrainingConfig(learning_rate=5e-5, epochs=2, batch_size=8), task_spec=task_spec,
    )
    queue = JobQueue("sqlite:///training_jobs.db")
    job_id = queue.submit_job(job_config)
    assert queue.get_job_status(job_id) in ("pending", "running")
    assert queue.wait(job_id, timeout=120) == "completed"
    status = queue.get_job_status(job_id)
    if status == "completed":
        results = queue.get_job_results(job_id)

    direct = Trainer(lambda: MyModel(config), config, TrainingConfig(learning_rate=5e-5, epochs=2, batch_size=8,
                     checkpoint_dir=str(tmp_path / "direct")), task_spec).train(train_dataset, val_dataset)
    assert results["loss_history"] == direct["loss_history"]

    # Durable: another queue object (another process, later) on the same URL sees it all.
    again = JobQueue("sqlite:///training_jobs.db")
    record = again.get_job(job_id)
    assert record.state == "completed" and record.checkpoint_path.startswith(str(tmp_path / "training_jobs_jobs" / job_id))
    assert again.get_job_results(job_id)["final_loss"] == results["final_loss"]
    assert [r.id for r in again.list_jobs("completed")] == [job_id]


class Broken(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)

    def forward(self, x):
        raise RuntimeError("this model is broken")


def test_a_failing_job_is_failed_with_its_error_and_nothing_else_breaks(queue_cluster, tmp_path):
    queue = JobQueue_(tmp_path)
    job_id = queue.submit_job(_JobConfig(model_factory=Broken, train_data=_data()))
    assert queue.wait(job_id, timeout=120) == "failed"
    assert "this model is broken" in queue.get_job(job_id).error
    with pytest.raises(RuntimeError, match=f"job {job_id} is failed: RuntimeError: this model is broken"):
        queue.get_job_results(job_id)
    with pytest.raises(KeyError, match="list_jobs"):
        queue.get_job_status("nope")


def test_bad_input_is_refused_with_the_fix(tmp_path):
    from trainyard.job_queue import JobConfig, JobQueue

    with pytest.raises(ValueError, match="train_data is None"):
        JobConfig(model_factory=Broken)
    with pytest.raises(TypeError, match="model_factory"):
        JobConfig(model_factory=3, train_data=[1])
    with pytest.raises(TypeError, match="lerning_rate"):
        JobConfig(model_factory=Broken, train_data=[1], training_config={"lerning_rate": 1})
    with pytest.raises(ValueError, match="in-memory SQLite"):
        JobQueue("sqlite://")
    with pytest.raises(ValueError, match="not a usable SQLAlchemy URL"):
        JobQueue("nosuchdb://x")


def test_cancel_then_resume_continues_from_the_checkpoint(queue_cluster, tmp_path):
    from tests.execution.hooks import SlowBatches

    config = SimpleNamespace(vocab_size=50, d_model=16)
    training = TrainingConfig(epochs=3, batch_size=4, checkpoint_every_n_steps=1)
    queue = JobQueue_(tmp_path)
    job = _JobConfig(model_factory=ModelFactory(config), config=config, train_data=_data(), training_config=training, hooks=[SlowBatches(0.5)])
    job_id = queue.submit_job(job)
    deadline = time.monotonic() + 60
    while queue.get_job_status(job_id) != "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(3)  # a few batches, and the heartbeat sees the cancellation within HEARTBEAT_S
    assert queue.cancel_job(job_id)
    time.sleep(4)
    record = queue.get_job(job_id)
    assert record.state == "cancelled"
    from trainyard.engine.run_folder import latest_valid

    assert latest_valid(tmp_path / "jobs" / job_id) is not None  # stopped with a checkpoint
    queue.resume_job(job_id)
    assert queue.wait(job_id, timeout=120) == "completed"
    assert queue.get_job(job_id).attempts == 2
    resumed = queue.get_job_results(job_id)
    direct = Trainer(ModelFactory(config), config, training.replace(checkpoint_dir=str(tmp_path / "d"))).train(_data())
    assert resumed["loss_history"] == direct["loss_history"]


def test_a_job_whose_driver_is_stopped_through_ray_is_interrupted_and_resumes_from_its_checkpoint(queue_cluster, tmp_path):
    """`ray job stop` (or any end of the job's process that it did not choose): the record
    says interrupted and why, and resume_job continues from the newest checkpoint to the
    uninterrupted losses."""
    from ray.job_submission import JobSubmissionClient

    from tests.execution.hooks import SlowBatches

    config = SimpleNamespace(vocab_size=50, d_model=16)
    training = TrainingConfig(epochs=3, batch_size=4, checkpoint_every_n_steps=1)
    queue = JobQueue_(tmp_path)
    job_id = queue.submit_job(_JobConfig(model_factory=ModelFactory(config), config=config, train_data=_data(), training_config=training,
                                         hooks=[SlowBatches(0.4)], max_retries=0))
    from trainyard.engine.run_folder import latest_valid

    deadline = time.monotonic() + 120
    while latest_valid(tmp_path / "jobs" / job_id) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    record = queue.get_job(job_id)
    assert record.state == "running" and record.ray_job == f"trainyard-{job_id}-1"
    JobSubmissionClient(queue_cluster.address).stop_job(record.ray_job)
    assert queue.wait(job_id, timeout=60) == "interrupted"
    assert "SIGTERM" in queue.get_job(job_id).error or "STOPPED" in queue.get_job(job_id).error, queue.get_job(job_id).error
    with pytest.raises(RuntimeError, match="is interrupted"):
        queue.get_job_results(job_id)
    queue.resume_job(job_id)
    assert queue.wait(job_id, timeout=120) == "completed"
    assert queue.get_job(job_id).attempts == 2
    log = (tmp_path / "jobs" / job_id / "job.log").read_text()
    assert "attempt 2 started" in log and "resumed from" in log, log[-2000:]
    direct = Trainer(ModelFactory(config), config, training.replace(checkpoint_dir=str(tmp_path / "d"))).train(_data())
    assert queue.get_job_results(job_id)["loss_history"] == direct["loss_history"]


class ModelFactory:
    def __init__(self, config):
        self.config = config

    def __call__(self):
        return MyModel(self.config)


def JobQueue_(tmp_path):  # noqa: N802 - a queue in tmp_path
    from trainyard.job_queue import JobQueue

    return JobQueue(f"sqlite:///{tmp_path}/jobs.db", storage_path=tmp_path / "jobs")


def _JobConfig(**kwargs):  # noqa: N802
    from trainyard.job_queue import JobConfig

    return JobConfig(**kwargs)


def test_an_fsdp_job_shards_across_its_workers_and_trains_as_one_process(queue_cluster, tmp_path):
    import functools

    from trainyard.engine import checkpoint as ck
    from trainyard.models import GPT

    config = {"vocab_size": 50, "max_seq_len": 12, "d_model": 16, "n_layers": 2, "n_heads": 2}
    settings = dict(learning_rate=1e-2, epochs=2, random_seed=3)
    queue = JobQueue_(tmp_path)
    job_id = queue.submit_job(_JobConfig(
        model_factory=functools.partial(GPT, config), config=config, train_data=_data(), num_workers=2,
        training_config=TrainingConfig(batch_size=4, parallelism="fsdp", **settings),
    ))
    assert queue.wait(job_id, timeout=300) == "completed", queue.get_job(job_id).error
    results = queue.get_job_results(job_id)
    # 2 workers x batch 4 train as one process with batch 8.
    direct = Trainer(functools.partial(GPT, config), config, TrainingConfig(batch_size=8, checkpoint_dir=str(tmp_path / "direct"), **settings)).train(_data())
    assert results["loss_history"] == pytest.approx(direct["loss_history"], abs=1e-5)
    assert ck.load(queue.get_job(job_id).checkpoint_path).sharded
