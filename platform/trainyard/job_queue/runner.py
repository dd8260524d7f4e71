"""A job, inside its Ray task: mark it running, heartbeat, train, record the outcome."""

from __future__ import annotations

import pickle
import threading
import time
import traceback
from pathlib import Path

from trainyard.engine.checkpoint import latest_valid
from trainyard.engine.hooks import TrainingHooks
from trainyard.execution.configs import run_config, scaling_config
from trainyard.execution.remote import loads
from trainyard.job_queue.records import HEARTBEAT_S, finish, open_table
from trainyard.trainer import Trainer


def run_job(url: str, job_id: str, payload: bytes, storage_path: str) -> None:
    """Runs as a Ray task: the job's whole life, written to its record as it goes."""
    engine, table = open_table(url)
    with engine.begin() as c:
        started = c.execute(table.update().where((table.c.id == job_id) & (table.c.state == "pending")).values(
            state="running", started_at=time.time(), heartbeat_at=time.time(),
        )).rowcount
    if not started:  # cancelled before it began
        return
    watch = _Watch(engine, table, job_id)
    watch.start()
    try:
        job = loads(payload)
        checkpoint_dir = job.training_config.checkpoint_dir or str(Path(storage_path) / job_id)
        training_config = job.training_config.replace(checkpoint_dir=checkpoint_dir)
        if job.num_workers > 1:
            tc = training_config.replace(checkpoint_dir=None)
            trainer = Trainer(
                job.model_factory, job.config, tc, job.task_spec, hooks=list(job.hooks),
                scaling=scaling_config(job.num_workers, use_gpu=job.use_gpu),
                run_config=run_config(None, tc, name=job_id, storage_path=storage_path),  # a rerun resumes it
            )
            results = trainer.train(job.train_data, job.val_data)
        else:
            resume = checkpoint_dir if latest_valid(Path(checkpoint_dir)) is not None else None
            hooks = [*job.hooks, _StopWhenCancelled(watch)]  # in this process, where the watch runs
            trainer = Trainer(job.model_factory, job.config, training_config, job.task_spec, hooks=hooks)
            results = trainer.train(job.train_data, job.val_data, resume_from=resume)
        if watch.cancelled:
            return
        finish(engine, table, job_id, state="completed", results=pickle.dumps(results), checkpoint_path=results.get("checkpoint_path"))
    except BaseException:
        finish(engine, table, job_id, state="failed", error=traceback.format_exc())
        raise
    finally:
        watch.stop()


class _Watch(threading.Thread):
    """Touches the record's heartbeat and notices a cancellation from any process."""

    def __init__(self, engine, table, job_id: str):
        super().__init__(daemon=True, name=f"trainyard-job-{job_id}")
        self.engine, self.table, self.job_id = engine, table, job_id
        self.cancelled = False
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(HEARTBEAT_S):
            with self.engine.begin() as c:
                c.execute(self.table.update().where(self.table.c.id == self.job_id).values(heartbeat_at=time.time()))
                state = c.execute(self.table.select().with_only_columns(self.table.c.state).where(self.table.c.id == self.job_id)).scalar()
            if state == "cancelled":
                self.cancelled = True

    def stop(self) -> None:
        self._stop_event.set()


class _StopWhenCancelled(TrainingHooks):
    def __init__(self, watch: _Watch):
        self.watch = watch

    def on_batch_end(self, trainer, batch, outputs) -> None:
        if self.watch.cancelled and not trainer.stop_requested:
            trainer.request_stop("the job was cancelled")
