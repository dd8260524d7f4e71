"""A Ray Train worker told to stop: the run saves at the next optimizer step and Ray restarts it.

A preempted VM or an evicted pod gets SIGTERM and some seconds before it is killed. Ray's own
handler exits the worker at once, and the run loses every step since its last checkpoint.
Here, while the engine loop runs, the first SIGTERM is taken as notice instead:

    watch()              # from the training thread, once per run (RayTrainContext does)
    stop_signal()        # asked by the loop at every optimizer step: why to stop, or None

The loop's ranks vote in the step's collective; all of them save a checkpoint at that step and
end the run. Ray Train is told of the preemption as its own drain watcher tells it (the
worker's preemption info, with a deadline `GRACE_S` away), so its controller restarts the run
from that checkpoint, charged to `FailureConfig.max_preemption_failures` (unlimited by
default), not to `max_failures`. A second SIGTERM, or the deadline passing, exits as Ray would.
A drain notice Ray gives itself (its PreemptionWatcher, a node being reclaimed) stops the run
the same way, at the next step instead of at the deadline.

These are Ray Train V2's internals (ray~=2.60), and a warning says when one is missing:
without the worker's own actor call, SIGTERM does what Ray's handler does; without the
preemption info, the run still saves at the next step, then fails (a run that returned would
count as finished), so Ray restarts it within `max_failures`.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from typing import Any

from trainyard._logging import get_logger

log = get_logger("trainyard.execution")

GRACE_S = 30.0  # what a Kubernetes pod gets by default between SIGTERM and SIGKILL


class _Watch:
    """This process's state (one Ray Train worker runs one training thread at a time)."""

    def __init__(self) -> None:
        self.training: threading.Thread | None = None  # the thread whose run a SIGTERM stops
        self.previous: Any = None  # the handler before ours (Ray's): a second SIGTERM gets it
        self.received: float | None = None  # when the SIGTERM came
        self.rank = 0
        self.timer: threading.Timer | None = None  # exits as Ray would, if the run outlives GRACE_S


_watch = _Watch()


def watch(rank: int) -> None:
    """Take SIGTERM as notice for the run of the calling thread. A handler can be set only on
    a process's main thread, which a Ray Train worker keeps for Ray's calls: it is set there,
    through a call to this worker's own actor."""
    import ray

    _watch.training, _watch.rank, _watch.received = threading.current_thread(), rank, None
    try:
        actor = ray.get_runtime_context().current_actor
        ray.get(actor.execute.remote(_install), timeout=30)
    except Exception as e:  # noqa: BLE001 - Ray's worker API changed: Ray's handler stays
        log.warning("SIGTERM stops this worker without a checkpoint (Ray Train's worker API changed: %s)", e)


def _install() -> None:
    current = signal.getsignal(signal.SIGTERM)
    if current is not _on_sigterm:
        _watch.previous = current
        signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(signum: int, frame: Any) -> None:
    training = _watch.training
    if training is None or not training.is_alive() or _watch.received is not None:
        _exit_as_before(signum, frame)  # no run to save, or told twice
        return
    _watch.received = time.time()
    signal.signal(signal.SIGTERM, _watch.previous if _watch.previous is not None else signal.SIG_DFL)
    log.warning("rank %d got SIGTERM: the run saves a checkpoint at the next optimizer step and Ray Train restarts it "
                "from there (a second SIGTERM exits now)", _watch.rank)
    _tell_ray(_watch.received + GRACE_S)
    # The run should be gone well before; if it is stuck (a collective whose peer died), go as Ray would.
    _watch.timer = threading.Timer(GRACE_S + 5, os.kill, (os.getpid(), signal.SIGTERM))
    _watch.timer.daemon = True
    _watch.timer.start()


def _exit_as_before(signum: int, frame: Any) -> None:
    previous = _watch.previous
    signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
    else:
        os.kill(os.getpid(), signum)


def _train_context() -> Any:
    from ray.train.v2._internal.execution.context import get_train_context

    return get_train_context()


def _tell_ray(deadline_s: float) -> None:
    """This worker's preemption notice, where Ray's drain watcher puts its own: the
    controller's status poll reads it and waits for the run to stop, up to the deadline."""
    try:
        import ray
        from ray.train.v2.api.preemption import PreemptionInfo

        preemption = _train_context().preemption_context
        if preemption.preemption_info is None:
            node = ray.get_runtime_context().get_node_id()
            preemption.preemption_info = PreemptionInfo(deadline_ms=int(deadline_s * 1000), preempted_node_to_ranks={node: [_watch.rank]})
    except Exception as e:  # noqa: BLE001 - internals moved: the run still saves; Ray counts a failure
        log.warning("could not tell Ray Train of the preemption (%s): its restart counts against max_failures", e)


def _ray_notice() -> Any:
    return getattr(getattr(_train_context(), "preemption_context", None), "preemption_info", None)


def stop_signal() -> str | None:
    """Why this worker's run must stop now, or None: a SIGTERM it got, or Ray's notice that a
    node of the run is being reclaimed."""
    if _watch.received is not None:
        return f"preempted (rank {_watch.rank} got SIGTERM)"
    try:
        info = _ray_notice()
    except Exception:  # noqa: BLE001 - not in a Ray Train worker, or internals moved
        return None
    if info is None:
        return None
    return f"preempted (Ray reports node(s) {', '.join(n[:8] for n in info.preempted_node_ids)} being reclaimed)"


def leave_for_ray() -> None:
    """After the run saved for a preemption, before it returns. Ray Train takes a run whose
    every rank returned for a finished one, even mid-preemption: a rank on a preempted node
    does not return. Told by SIGTERM, it moves the notice's deadline to now, so the
    controller restarts the run at its next poll; either way it waits to be stopped with
    its worker group."""
    try:
        info = _ray_notice()
    except Exception:  # noqa: BLE001 - not in a Ray Train worker, or internals moved
        info = None
    if _watch.received is None and (info is None or _watch.rank not in info.preempted_ranks):
        return
    if info is None:  # SIGTERM, and Ray could not be told
        raise RuntimeError(f"rank {_watch.rank} got SIGTERM: its run saved a checkpoint at this step; Ray Train restarts it "
                           "from there within FailureConfig(max_failures), else run the same command again to resume")
    if _watch.received is not None:
        _train_context().preemption_context.preemption_info = dataclasses.replace(info, deadline_ms=int(time.time() * 1000))
    limit = time.time() + GRACE_S + 10
    while time.time() < limit:
        time.sleep(0.1)
    log.warning("rank %d: Ray Train did not restart the preempted run within %.0f s", _watch.rank, GRACE_S + 10)
