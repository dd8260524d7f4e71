"""ASHA across a kill: a restored sweep prunes the trials an uninterrupted one prunes."""

from types import SimpleNamespace

from ray import cloudpickle
from trainyard.hpo.runner import _scheduler

# (trial, epoch, val/loss) as one-at-a-time trials report them; lower is better
# (ASHA's max_t is 2: "STOP" at epoch 2 is a trial's natural end; at epoch 1 it is a cut)
REPORTS = [("t0", 1, 2.0), ("t0", 2, 1.5), ("t1", 1, 3.0), ("t2", 1, 2.6), ("t3", 1, 1.0), ("t3", 2, 0.9), ("t4", 1, 2.9)]


def _feed(scheduler, reports, restored=None):
    """The scheduler's decisions on `reports`, as Tune calls it. `restored`: the trials a
    restored Tune knows from its own saved state (by default, every trial reported here)."""
    known = [SimpleNamespace(trial_id=tid) for tid in (restored if restored is not None else dict.fromkeys(t for t, _, _ in reports))]
    tune = SimpleNamespace(get_trials=lambda: known)  # Tune's controller, as the scheduler sees it
    decisions, added = [], set()
    for tid, epoch, loss in reports:
        trial = SimpleNamespace(trial_id=tid)
        if tid not in added:
            scheduler.on_trial_add(tune, trial)
            added.add(tid)
            known.append(trial)
        decisions.append(scheduler.on_trial_result(tune, trial, {"training_iteration": epoch, "val/loss": loss}))
    return decisions


def _new_sweep(state_file) -> bytes:
    """A new sweep's scheduler as Tune keeps it in tuner.pkl, pickled before the first trial."""
    scheduler = _scheduler("asha", 2, str(state_file))
    scheduler.set_search_properties("val/loss", "min")
    return cloudpickle.dumps(scheduler)


def test_a_restored_asha_decides_as_if_never_stopped(tmp_path):
    whole = _feed(cloudpickle.loads(_new_sweep(tmp_path / "whole.json")), REPORTS)
    assert "STOP" in whole and "CONTINUE" in whole  # the cut is real: some trials are pruned

    pickled = _new_sweep(tmp_path / "killed.json")
    first = _feed(cloudpickle.loads(pickled), REPORTS[:4])  # killed while t2 runs, after its epoch 1
    again = _feed(cloudpickle.loads(pickled), REPORTS[3:], restored=["t0", "t1", "t2"])  # t2 reports epoch 1 again, then the rest
    assert first + again[1:] == whole
    assert again[0] == first[3] == "STOP"  # the replayed report gets the decision it got the first time
    assert _feed(cloudpickle.loads(pickled), [("t5", 1, 2.7)], restored=["t0", "t1", "t2", "t3", "t4"]) == ["STOP"]  # and a new trial meets every finished one


def test_a_trial_that_tune_had_not_saved_when_killed_is_not_counted_twice(tmp_path):
    """Killed after t1 reported but before Tune saved its state: the restored sweep does not
    know t1 and starts its suggestion again as t1b. t1's old entry must not stay in the rungs
    beside t1b's (two votes for one trial would cut t2, which the uninterrupted sweep keeps)."""
    reports = [("t0", 1, 3.0), ("t0", 2, 2.5), ("t1", 1, 1.0), ("t1", 2, 0.9), ("t2", 1, 2.0)]
    whole = _feed(cloudpickle.loads(_new_sweep(tmp_path / "whole.json")), reports)
    assert whole[-1] == "CONTINUE"  # t2 is better than the median of t0 and t1

    pickled = _new_sweep(tmp_path / "killed.json")
    _feed(cloudpickle.loads(pickled), reports[:3])  # t1 reported epoch 1; Tune's saved state knows t0 only
    again = _feed(cloudpickle.loads(pickled), [("t1b", 1, 1.0), ("t1b", 2, 0.9), ("t2", 1, 2.0)], restored=["t0"])
    assert again == whole[2:]


def test_a_new_sweep_in_the_folder_starts_with_empty_rungs(tmp_path):
    """What the state file is for: without it, finished trials are forgotten."""
    assert _feed(cloudpickle.loads(_new_sweep(tmp_path / "state.json")), REPORTS)[3] == "STOP"  # t2, against t0 and t1
    assert _feed(cloudpickle.loads(_new_sweep(tmp_path / "state.json")), REPORTS[3:4], restored=[]) == ["CONTINUE"]  # against nothing
