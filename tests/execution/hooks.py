"""Hooks used inside Ray Train workers by the tests (module level, so they pickle)."""

import os
from pathlib import Path

from trainyard import TrainingHooks


class FailOnce(TrainingHooks):
    """Kills (os._exit) or raises in one rank at one step, the first time only."""

    def __init__(self, marker: str, rank: int, epoch: int, step: int, how: str = "exit"):
        self.marker, self.rank, self.epoch, self.step, self.how = marker, rank, epoch, step, how

    def on_batch_end(self, trainer, batch, outputs):
        import ray.train

        s = trainer.state
        if ray.train.get_context().get_world_rank() != self.rank or (s.epoch, s.global_step) != (self.epoch, self.step):
            return
        if Path(self.marker).exists():
            return
        Path(self.marker).write_text("failed once")
        if self.how == "exit":
            os._exit(1)
        raise RuntimeError(f"boom from rank {self.rank} at step {self.step}")


class Unpicklable(TrainingHooks):
    def __init__(self):
        import threading

        self.lock = threading.Lock()  # locks do not pickle, even with cloudpickle


class SlowBatches(TrainingHooks):
    """Sleeps after every batch, so a test can act while a job runs."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_batch_end(self, trainer, batch, outputs):
        import time

        time.sleep(self.seconds)


class StopAt(TrainingHooks):
    """Every rank requests a stop after the same batch (a cancel, as the job queue sends)."""

    def __init__(self, epoch: int, batch: int):
        self.at = (epoch, batch)

    def on_batch_end(self, trainer, batch, outputs):
        if (trainer.state.epoch, trainer.state.batch_in_epoch) == self.at:
            trainer.request_stop("stopped by the test")


class RecordRows(TrainingHooks):
    """Appends every trained row (epoch, rank, tokens) to a file per rank: what each worker
    really trained on."""

    def __init__(self, folder: str):
        self.folder = folder

    def on_batch_end(self, trainer, batch, outputs):
        import json

        rank = trainer.context.rank
        with open(Path(self.folder) / f"rank{rank}.jsonl", "a") as f:
            for row in batch["input_ids"].tolist():
                f.write(json.dumps([trainer.state.epoch, rank, row]) + "\n")


class MarkAt(TrainingHooks):
    """Rank 0 writes `marker` at the end of optimizer step `step` of `epoch` (first time only)
    and holds there `hold` seconds: a test's moment to act on the cluster mid-run."""

    def __init__(self, marker: str, epoch: int, step: int, hold: float = 3.0):
        self.marker, self.at, self.hold = marker, (epoch, step), hold

    def on_step_end(self, trainer, step, metrics):
        import time

        if (trainer.state.epoch, step) == self.at and trainer.context.rank == 0 and not Path(self.marker).exists():
            Path(self.marker).write_text(str(time.time()))
            time.sleep(self.hold)


class RecordSteps(TrainingHooks):
    """Appends (global step, world size, time) at every optimizer step's end, from rank 0."""

    def __init__(self, path: str):
        self.path = path

    def on_step_end(self, trainer, step, metrics):
        import json
        import time

        if trainer.context.rank == 0:
            with open(self.path, "a") as f:
                f.write(json.dumps([step, trainer.context.world_size, time.time()]) + "\n")


class SigtermAt(TrainingHooks):
    """Sends SIGTERM to rank `rank`'s own process at the end of optimizer step `step` (first
    time only, `marker`), as a preempted machine gets it, and waits for its handler to run
    (on the process's main thread, which Ray keeps busy): the signal lands during the next step."""

    def __init__(self, marker: str, rank: int, step: int):
        self.marker, self.rank, self.step = marker, rank, step

    def on_step_end(self, trainer, step, metrics):
        import signal
        import time

        from trainyard.execution import preemption

        if trainer.context.rank != self.rank or step != self.step or Path(self.marker).exists():
            return
        Path(self.marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 20
        while preemption.stop_signal() is None and time.monotonic() < deadline:
            time.sleep(0.05)



class HoldAloneAfterCheckpoint(TrainingHooks):
    """Rank 0 of a one-worker run holds after its first checkpoint (up to `cap` seconds, once):
    time for a test's cluster to get a node back and for Ray to grow the run, which ends the
    hold by stopping this worker; the run then resumes from that checkpoint, no step redone."""

    def __init__(self, cap: float):
        self.cap, self.held = cap, False

    def on_checkpoint(self, trainer, path):
        import time

        if trainer.context.world_size == 1 and not self.held:
            self.held = True
            time.sleep(self.cap)
