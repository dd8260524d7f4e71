"""Requests the cluster can never satisfy (no autoscaler here: 4 CPUs, no GPU) are refused at
once with what was asked, what there is, and the fix, instead of Ray waiting forever."""

import time

import pytest
from trainyard import Trainer, TrainingConfig

from tests.helpers import VOCAB, lm_factory, lm_samples

QUICK = 60  # seconds: a refusal, not a wait for resources


def test_more_workers_or_gpus_than_the_cluster_has_are_refused(ray_session, tmp_path):
    import ray.train

    began = time.monotonic()
    with pytest.raises(ValueError, match=r"training on 2 Ray Train worker\(s\) with a GPU each needs 2 GPU \(2 x 1\), but this Ray cluster has 0 GPU and no autoscaler.*drop the GPUs"):
        Trainer(lm_factory(), {"vocab_size": VOCAB}, TrainingConfig(epochs=1), scaling=ray.train.ScalingConfig(num_workers=2, use_gpu=True)).train(lm_samples())
    with pytest.raises(ValueError, match=r"training on 9 Ray Train worker\(s\) needs 9 CPU \(9 x 1\), but this Ray cluster has 4 CPU.*Use fewer workers"):
        Trainer(lm_factory(), {"vocab_size": VOCAB}, TrainingConfig(epochs=1), scaling=9).train(lm_samples())
    assert time.monotonic() - began < QUICK


def test_a_sweep_whose_trial_cannot_fit_is_refused(ray_session, tmp_path):
    from trainyard.hpo import sweep
    from trainyard.models import GPT

    config = {"vocab_size": VOCAB, "max_seq_len": 8, "d_model": 16, "n_layers": 1, "n_heads": 2}
    with pytest.raises(ValueError, match=r"one trial \(resources_per_trial=\{'cpu': 1, 'gpu': 1\}\) needs 1 GPU .* has 0 GPU"):
        sweep(lambda c: GPT(c), config, lm_samples(8), lm_samples(4, seed=2), space={"params": {"learning_rate": {"loguniform": [1e-4, 1e-2]}}},
              training_config=TrainingConfig(epochs=1), resources_per_trial={"cpu": 1, "gpu": 1}, storage_path=tmp_path, num_samples=1)


def test_a_job_that_cannot_fit_is_refused_and_leaves_no_row(queue_cluster, tmp_path):
    """Checked against the nodes the queue's admission actor last saw (the session's head: 2 CPUs)."""
    from trainyard.job_queue import JobConfig, JobQueue

    queue = JobQueue(f"sqlite:///{tmp_path}/jobs.db")
    with pytest.raises(ValueError, match=r"JobConfig\(num_workers=1, use_gpu=True\) needs 1 GPU"):
        queue.submit_job(JobConfig(model_factory=lm_factory(), config={"vocab_size": VOCAB}, train_data=lm_samples(), use_gpu=True))
    with pytest.raises(ValueError, match=r"JobConfig\(num_workers=3\) needs 3 CPU \(3 x 1\), but this Ray cluster has 2 CPU"):
        queue.submit_job(JobConfig(model_factory=lm_factory(), config={"vocab_size": VOCAB}, train_data=lm_samples(), num_workers=3))
    assert queue.list_jobs() == []


def test_rays_noise_after_a_good_run_is_dropped_and_everything_else_kept():
    from trainyard.execution.ray_env import without_noise

    batch = [
        "[trainyard] epoch 1/1 | train/loss 1.477",
        "Failed to stop PlacementGroupCleaner gracefully.",
        "Traceback (most recent call last):",
        '  File "/ray/train/v2/_internal/callbacks/placement_group_callback.py", line 127, in _stop_cleaner',
        "    ray.get(self._cleaner.stop.remote(), timeout=self._stop_timeout)",
        "ray.exceptions.GetTimeoutError: Get timed out: some object(s) not ready.",
        "[2026-11-26 05:16:27,436 E 32737 32767] core_worker.cc:2465: Actor with class name: 'PreemptionWatcher' and ID: '2ac9' has constructor arguments",
        "Failed to send resource request for train-3f2a. If this only happens transiently during network partition or CPU being overloaded, "
        "it's safe to ignore this error. If this error persists, file a GitHub issue.",
        "Traceback (most recent call last):",
        '  File "/ray/train/v2/_internal/execution/scaling_policy/autoscaling_coordinator_client.py", line 58, in send_resource_request',
        "ray.exceptions.GetTimeoutError: Get timed out: some object(s) not ready.",
        "final_loss 1.3788; checkpoint /runs/x",
        "Traceback (most recent call last):",  # a real failure is never dropped
        "ValueError: bad",
    ]
    assert without_noise(batch) == [batch[0], "final_loss 1.3788; checkpoint /runs/x", "Traceback (most recent call last):", "ValueError: bad"]


def test_a_workers_lines_reach_the_user_once_each_and_none_is_lost_for_looking_alike():
    """Ray's deduplication dropped a second run's (or a restarted worker's) epoch lines as
    '[repeated 2x across cluster]', lines equal but for their numbers."""
    from trainyard.execution.ray_env import SameLineOnce, filtered

    now = [0.0]
    printed = []
    emit = filtered(lambda batch: printed.append((batch["pid"], batch["lines"])), SameLineOnce(window_s=5, clock=lambda: now[0]))
    warning = "UserWarning: the same from every rank"
    emit({"pid": 1, "lines": ["[trainyard] epoch 1/3 | train/loss 3.211", warning]})
    emit({"pid": 2, "lines": [warning, "Failed to stop PlacementGroupCleaner gracefully."]})  # a copy and noise: nothing
    now[0] = 1.0
    emit({"pid": 3, "lines": ["[trainyard] epoch 1/3 | train/loss 3.108"]})  # alike, but another run's line
    emit({"pid": 1, "lines": [warning]})  # the same process saying it again is a new message
    now[0] = 7.0
    emit({"pid": 2, "lines": [warning]})  # long after: said again
    assert printed == [(1, ["[trainyard] epoch 1/3 | train/loss 3.211", warning]), (3, ["[trainyard] epoch 1/3 | train/loss 3.108"]),
                       (1, [warning]), (2, [warning])]


def test_rays_own_deduplication_is_off_once_connected(ray_session):
    from ray._private import ray_logging

    assert ray_logging.RAY_DEDUP_LOGS is False


def test_with_an_autoscaler_configured_requests_are_left_to_it(ray_session, monkeypatch):
    from ray._private import state as ray_state
    from trainyard.execution.ray_env import check_satisfiable

    with pytest.raises(ValueError, match="no autoscaler"):
        check_satisfiable({"GPU": 1}, 2, "this", "fix")
    monkeypatch.setattr(ray_state.state, "get_max_resources_from_cluster_config", lambda: {"CPU": 64, "GPU": 8})
    check_satisfiable({"GPU": 1}, 2, "this", "fix")  # the autoscaler may add GPU nodes


PROBE_OTHER_INSTANCE = """
import time, ray
ray.init(address="local", num_cpus=1, include_dashboard=False)
print("up", flush=True)
time.sleep(120)
"""


@pytest.mark.slow
def test_rays_own_actors_find_the_state_api_with_another_ray_on_the_machine(ray_session):
    """Ray Train's PlacementGroupCleaner polls the state API with no address; with a second
    Ray instance on the machine that failed ("Found multiple active Ray instances") and
    left a traceback after every good run."""
    import subprocess
    import sys

    other = subprocess.Popen([sys.executable, "-c", PROBE_OTHER_INSTANCE], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "up"

        @ray_session.remote(num_cpus=0)
        def list_actors_without_an_address():
            from ray.util.state import list_actors

            return len(list_actors(limit=10)) >= 0

        assert ray_session.get(list_actors_without_an_address.remote(), timeout=60)
    finally:
        other.terminate()
        other.wait(timeout=60)
