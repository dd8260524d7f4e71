"""SIGTERM as notice, outside Ray: what the handler does and what the run is told (the whole
path, on Ray Train workers, is in test_ray_train.py)."""

import signal
import threading

import pytest
from trainyard.execution import preemption


@pytest.fixture
def watched():
    """This thread's run watched, with a stand-in for Ray's handler; the watch and the handler
    as they were afterwards (and no exit timer left running)."""
    calls = []
    saved = (preemption._watch.training, preemption._watch.previous, preemption._watch.received)
    before = signal.getsignal(signal.SIGTERM)
    preemption._watch.training, preemption._watch.previous, preemption._watch.received = threading.current_thread(), lambda *a: calls.append(a), None
    signal.signal(signal.SIGTERM, preemption._on_sigterm)
    yield calls
    if preemption._watch.timer is not None:
        preemption._watch.timer.cancel()
    preemption._watch.training, preemption._watch.previous, preemption._watch.received = saved
    signal.signal(signal.SIGTERM, before)


def test_outside_a_ray_train_worker_nothing_asks_the_run_to_stop():
    assert preemption.stop_signal() is None
    preemption.leave_for_ray()  # returns: nothing was received


def test_the_first_sigterm_asks_the_run_to_stop_and_the_second_exits_as_before(watched):
    preemption._on_sigterm(signal.SIGTERM, None)
    assert watched == [], "the first SIGTERM is notice: the run goes on to its next step"
    assert preemption.stop_signal() == "preempted (rank 0 got SIGTERM)"
    assert signal.getsignal(signal.SIGTERM) is preemption._watch.previous, "a second SIGTERM goes to the handler before ours"
    assert preemption._watch.timer is not None and preemption._watch.timer.is_alive()


def test_with_no_run_to_save_sigterm_exits_as_before(watched):
    preemption._watch.training = threading.Thread(target=lambda: None)  # never started: not alive
    preemption._on_sigterm(signal.SIGTERM, None)
    assert len(watched) == 1 and preemption.stop_signal() is None


def test_a_run_that_ray_could_not_be_told_of_fails_rather_than_returning(watched):
    """Ray Train takes a run whose ranks all returned for a finished one: without Ray's
    preemption info (here: not in a worker), the saved run raises, for a restart."""
    preemption._on_sigterm(signal.SIGTERM, None)
    with pytest.raises(RuntimeError, match=r"rank 0 got SIGTERM: its run saved a checkpoint .*max_failures.*run the same command again"):
        preemption.leave_for_ray()
