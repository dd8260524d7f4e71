"""The global batch and its split over workers: what a step trains whatever the worker count."""

import pytest
from trainyard import TrainingConfig
from trainyard.engine.batching import BatchPlan, plan_batches, resume_batch, split
from trainyard.engine.data.order import epoch_batches, iter_epoch_batches


def test_the_default_global_batch_is_batch_size_times_accumulation_times_workers():
    cfg = TrainingConfig(batch_size=8, gradient_accumulation_steps=2)
    assert plan_batches(cfg, 4) == BatchPlan(global_batch=64, micro_batch=8, accumulation=2, world_size=4)


def test_fewer_workers_accumulate_more_micro_batches_of_at_most_batch_size():
    assert split(64, 4, 16) == BatchPlan(64, 16, 1, 4)
    assert split(64, 2, 16) == BatchPlan(64, 16, 2, 2)
    assert split(64, 1, 16) == BatchPlan(64, 16, 4, 1)
    assert split(12, 3, 6) == BatchPlan(12, 4, 1, 3)
    assert split(12, 1, 5) == BatchPlan(12, 4, 3, 1)  # 12 in pieces of at most 5: three of 4


def test_a_resumed_run_keeps_its_checkpoints_global_batch_on_other_workers():
    saved = {"batch_plan": {"global_batch": 12, "micro_batch": 6, "accumulation": 1, "world_size": 2},
             "training_config": {"batch_size": 6, "gradient_accumulation_steps": 1}, "world_size": 2, "position": {"epoch_complete": False}}
    assert plan_batches(TrainingConfig(batch_size=6), 3, saved) == BatchPlan(12, 4, 1, 3)
    assert plan_batches(TrainingConfig(batch_size=6), 1, saved) == BatchPlan(12, 6, 2, 1)
    # batch_size changed on purpose: the new run's own global batch
    assert plan_batches(TrainingConfig(batch_size=5), 1, saved) == BatchPlan(5, 5, 1, 1)


def test_a_global_batch_that_workers_cannot_share_evenly_says_what_would():
    with pytest.raises(ValueError, match=r"global_batch_size 64 cannot be split evenly over 3 worker\(s\) .* set global_batch_size to a multiple of 3 "
                                         r"\(e.g. 63\), or use worker counts that divide 64"):
        split(64, 3, 16)


@pytest.mark.parametrize("n, before, after, steps", [(96, (2, 6, 1), (3, 4, 1), 3), (96, (2, 6, 1), (1, 4, 3), 5), (100, (4, 3, 1), (2, 2, 3), 4)])
def test_a_position_kept_in_samples_continues_with_exactly_the_samples_that_were_next(n, before, after, steps):
    """Trained `steps` steps on W workers, the rest of the epoch on W': every sample the
    epoch uses once, and step by step the samples the W run would have trained."""
    (w, m, a), (w2, m2, a2) = before, after
    old, new = BatchPlan(w * m * a, m, a, w), BatchPlan(w2 * m2 * a2, m2, a2, w2)
    done = steps * a  # micro-batches each rank of the first run trained
    first = [b for r in range(w) for b in epoch_batches(n, m, 3, 7, r, w, 10)[:done]]
    start = resume_batch(done, old, new)
    rest = [list(iter_epoch_batches(n, m2, 3, 7, r, w2, 10, start=start)) for r in range(w2)]
    seen = [i for b in first for i in b] + [i for r in rest for b in r for i in b]
    whole = [i for b in epoch_batches(n, old.global_batch, 3, 7, 0, 1, 10) for i in b]  # one worker, a step a batch: the order
    assert sorted(seen) == sorted(whole[: n // w2 * w2])  # once each; the last n % W' of the order left for another epoch
    for k in range(len(rest[0]) // a2):  # the resumed run's step k is the uninterrupted run's step steps + k
        step = {i for r in rest for b in r[k * a2 : (k + 1) * a2] for i in b}
        assert step == set(whole[(steps + k) * old.global_batch : (steps + k + 1) * old.global_batch])


def test_at_an_epochs_end_a_count_that_cannot_split_the_global_batch_takes_its_own():
    saved = {"batch_plan": {"global_batch": 8, "micro_batch": 4, "accumulation": 1, "world_size": 2},
             "training_config": {"batch_size": 4, "gradient_accumulation_steps": 1}, "world_size": 2}
    assert plan_batches(TrainingConfig(batch_size=4), 3, {**saved, "position": {"epoch_complete": True}}) == BatchPlan(12, 4, 1, 3)
    with pytest.raises(ValueError, match=r"global_batch_size 8 cannot be split evenly over 3 worker"):  # mid-epoch: the same steps or none
        plan_batches(TrainingConfig(batch_size=4), 3, {**saved, "position": {"epoch_complete": False}})
