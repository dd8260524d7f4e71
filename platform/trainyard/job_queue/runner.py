"""A job's driver, run by Ray's job system: mark it running, heartbeat, train, record the outcome.

    python -m trainyard.job_queue.runner URL JOB_ID ATTEMPT STORAGE ALLOW   # the Ray Job's entrypoint
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from trainyard._logging import get_logger, own_process_logs
from trainyard._trust import check_private, make_private_dir
from trainyard.engine.context import LocalContext
from trainyard.engine.hooks import TrainingHooks
from trainyard.engine.run_folder import latest_valid
from trainyard.execution.configs import run_config, scaling_config
from trainyard.execution.ingest import run_inputs
from trainyard.execution.remote import loads
from trainyard.job_queue.records import HEARTBEAT_S, database_files, finish, open_table, this_process
from trainyard.trainer import Trainer


def run_job(url: str, job_id: str, attempt: int, payload: bytes | None, storage_path: str, allow_shared_storage: bool = False) -> None:
    """The job's whole life, written to its record as it goes (in its Ray Job's driver).

    `attempt` fences the record: this process claims, heartbeats and finishes the job only
    while the record still counts that attempt, so a driver of an earlier launch that is
    still dying never writes over (or trains beside) the run that resumed it."""
    engine, table = open_table(url)
    mine = (table.c.id == job_id) & (table.c.attempts == attempt)
    with engine.begin() as c:
        started = c.execute(table.update().where(mine & (table.c.state == "pending")).values(
            state="running", started_at=time.time(), heartbeat_at=time.time(), worker=this_process(),
        )).rowcount
    if not started:  # cancelled before it began, or launched again since
        return
    if payload is None:  # the job as submitted, from its record
        with engine.connect() as c:
            payload = c.execute(table.select().with_only_columns(table.c.payload).where(table.c.id == job_id)).scalar_one()
    log_file = log_path(Path(storage_path) / job_id)  # the record's checkpoint_dir
    with job_log(log_file):
        get_logger("trainyard.job_queue").info("job %s: attempt %d started on %s", job_id, attempt, this_process())
        _run(engine, table, job_id, attempt, payload, storage_path, log_file, allow_shared_storage)


def log_path(checkpoint_dir: str | Path) -> Path:
    """The job's log, in the job's directory (its record's `checkpoint_dir`): what its
    processes log; `trainyard jobs logs ID` prints it."""
    return Path(checkpoint_dir) / "job.log"


@contextlib.contextmanager
def job_log(path: Path):
    """Append the `trainyard` logger's lines to `path` (once per process) while in the block."""
    logger = logging.getLogger("trainyard")
    own_process_logs()  # the job's process is trainyard's: its level and line, which the file gets too
    if any(getattr(h, "baseFilename", None) == str(path) for h in logger.handlers):
        yield
        return
    make_private_dir(path.parent)
    handler = logging.FileHandler(path, mode="a")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()


class JobLog(TrainingHooks):
    """In a multi-worker job, rank 0's lines (the epoch lines) go to the job's log too."""

    def __init__(self, path: Path):
        self.path = path
        self._log = None

    def on_train_begin(self, trainer, train_dataset, val_dataset) -> None:
        if trainer.context.is_main and self._log is None:
            self._log = job_log(self.path)
            self._log.__enter__()

    def on_train_end(self, trainer, results) -> None:
        if self._log is not None:
            self._log.__exit__(None, None, None)
            self._log = None


def _run(engine, table, job_id: str, attempt: int, payload: bytes, storage_path: str, log_file: Path, allow_shared_storage: bool) -> None:
    log = get_logger("trainyard.job_queue")
    watch = _Watch(engine, table, job_id, attempt)
    watch.start()
    try:
        check_private(database_files(engine), "the job queue's database", allow=allow_shared_storage)
        job = loads(payload)
        if job.num_workers > 1:
            trainer = Trainer(
                job.model_factory, job.config, job.training_config, job.task_spec, hooks=[*job.hooks, JobLog(log_file)],
                scaling=scaling_config(job.num_workers, use_gpu=job.use_gpu),
                run_config=run_config(None, job.training_config, name=job_id, storage_path=storage_path),  # a rerun resumes it
            )
            results = trainer.train(job.train_data, job.val_data)
        else:  # in this process, in the job's folder (unless the job's config names one)
            run_dir = Path(job.training_config.checkpoint_dir or Path(storage_path) / job_id)
            resume = run_dir if latest_valid(run_dir) is not None else None
            hooks = [*job.hooks, _StopWhenCancelled(watch)]  # in this process, where the watch runs
            trainer = Trainer(job.model_factory, job.config, job.training_config, job.task_spec, hooks=hooks)
            data = run_inputs(job.train_data, job.val_data, job.config, job.task_spec, on_ray=False)
            results = trainer.run(LocalContext(job.training_config.device, run_dir=run_dir), *data, resume_from=resume)
        if watch.cancelled:
            log.info("job %s: cancelled; its checkpoint %s is where resume_job continues", job_id, results.get("checkpoint_path"))
            return
        finish(engine, table, job_id, attempt, state="completed", results=pickle.dumps(results), checkpoint_path=results.get("checkpoint_path"))
        log.info("job %s: completed, final_loss %.4f; checkpoint %s", job_id, results["final_loss"], results.get("checkpoint_path"))
    except _Superseded:
        log.info("job %s: attempt %d stopped, the job was launched again", job_id, attempt)
        return  # the record is the newer attempt's
    except (SystemExit, KeyboardInterrupt) as e:
        # `ray job stop` (SIGTERM, below) or Ctrl-C where it was run by hand
        finish(engine, table, job_id, attempt, state="interrupted", error=(
            f"the job's process was told to exit ({type(e).__name__}: {e}) at {time.strftime('%Y-%m-%d %H:%M:%S')}; "
            "queue.resume_job(job_id) continues from its last checkpoint"
        ))
        raise
    except BaseException:
        finish(engine, table, job_id, attempt, state="failed", error=traceback.format_exc())
        log.info("job %s: failed: %s", job_id, traceback.format_exc().strip().splitlines()[-1])
        raise
    finally:
        watch.stop()


class _Superseded(Exception):
    """The job was launched again (resumed) while this attempt still ran."""


class _Watch(threading.Thread):
    """Touches the record's heartbeat and notices a cancellation, or a newer attempt, from
    any process."""

    def __init__(self, engine, table, job_id: str, attempt: int):
        super().__init__(daemon=True, name=f"trainyard-job-{job_id}")
        self.engine, self.table, self.job_id, self.attempt = engine, table, job_id, attempt
        self.cancelled = self.superseded = False
        self._stop_event = threading.Event()

    def run(self) -> None:
        t = self.table
        while not self._stop_event.wait(HEARTBEAT_S):
            with self.engine.begin() as c:
                c.execute(t.update().where((t.c.id == self.job_id) & (t.c.attempts == self.attempt)).values(heartbeat_at=time.time()))
                row = c.execute(t.select().with_only_columns(t.c.state, t.c.attempts).where(t.c.id == self.job_id)).first()
            if row is None or row.attempts != self.attempt:
                self.superseded = self.cancelled = True
            elif row.state == "cancelled":
                self.cancelled = True

    def stop(self) -> None:
        self._stop_event.set()


class _StopWhenCancelled(TrainingHooks):
    def __init__(self, watch: _Watch):
        self.watch = watch

    def on_batch_end(self, trainer, batch, outputs) -> None:
        if self.watch.superseded:  # stop at once, saving nothing: the directory is the newer run's
            raise _Superseded(f"job {self.watch.job_id} was launched again (attempt > {self.watch.attempt})")
        if self.watch.cancelled and not trainer.stop_requested:
            trainer.request_stop("the job was cancelled")


def main(argv: list[str]) -> int:
    def stop(signum, frame):  # `ray job stop`: recorded as interrupted, then the process ends
        raise SystemExit(f"stopped by signal {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, stop)
    url, job_id, attempt, storage_path, allow = argv
    run_job(url, job_id, int(attempt), None, storage_path, allow == "1")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
