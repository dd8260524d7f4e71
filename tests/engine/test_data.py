import pytest
import torch
from trainyard.engine.data.collate import Collator
from trainyard.engine.data.inputs import as_dataset
from trainyard.engine.data.order import epoch_batches, eval_batches, iter_epoch_batches


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("chunk", [5, 1000])  # many chunks / one chunk
def test_n_ranks_see_the_global_batches_of_one_process_with_n_times_the_batch(world, chunk):
    n, b = 64, 4
    for epoch in range(3):
        single = epoch_batches(n, b * world, epoch, 7, 0, 1, chunk)
        per_rank = [epoch_batches(n, b, epoch, 7, r, world, chunk) for r in range(world)]
        for k, global_batch in enumerate(single):
            assert sorted(i for r in range(world) for i in per_rank[r][k]) == sorted(global_batch)


@pytest.mark.parametrize("n, world, batch, chunk", [(103, 2, 4, 10), (103, 3, 5, 7), (50, 4, 3, 1000), (7, 7, 2, 2), (64, 1, 8, 9)])
def test_every_sample_once_per_epoch_with_equal_batches_on_every_rank(n, world, batch, chunk):
    for epoch in range(3):
        per_rank = [epoch_batches(n, batch, epoch, 11, r, world, chunk) for r in range(world)]
        assert len({len(batches) for batches in per_rank}) == 1  # an uneven rank would hang DDP
        seen = [i for batches in per_rank for b in batches for i in b]
        assert len(seen) == len(set(seen)) == n - n % world  # none twice; at most world - 1 dropped
        assert set(seen) <= set(range(n))


def test_the_dropped_remainder_is_other_rows_each_epoch():
    dropped = [set(range(101)) - {i for r in range(2) for b in epoch_batches(101, 4, e, 0, r, 2, 10) for i in b} for e in range(6)]
    assert all(len(d) == 1 for d in dropped) and len(set.union(*dropped)) > 1


def test_order_is_a_function_of_seed_and_epoch_and_visits_one_chunk_at_a_time():
    assert epoch_batches(100, 4, 2, 5, 0, 1, 10) == epoch_batches(100, 4, 2, 5, 0, 1, 10)
    assert epoch_batches(100, 4, 2, 5, 0, 1, 10) != epoch_batches(100, 4, 3, 5, 0, 1, 10)
    assert epoch_batches(100, 4, 2, 5, 0, 1, 10) != epoch_batches(100, 4, 2, 6, 0, 1, 10)
    flat = [i for b in epoch_batches(100, 4, 2, 5, 0, 1, 10) for i in b]
    chunks = [i // 10 for i in flat]
    assert [chunks[k] for k in range(0, 100, 10)] == [chunks[k + 9] for k in range(0, 100, 10)]  # 10 rows of a chunk in a row
    assert sorted(chunks[::10]) == list(range(10)) and chunks[::10] != list(range(10))  # chunks shuffled too
    assert flat[:10] != sorted(flat[:10])  # and rows within a chunk


def test_a_resumed_epoch_continues_with_the_same_batches():
    full = epoch_batches(1000, 7, 4, 3, 1, 3, 50)
    for start in (0, 1, 6, 7, 20, len(full) - 1, len(full)):
        assert list(iter_epoch_batches(1000, 7, 4, 3, 1, 3, 50, start=start)) == full[start:]


def test_data_of_one_chunk_is_in_the_distributed_samplers_order():
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(range(10), num_replicas=1, rank=0, shuffle=True, seed=3)
    sampler.set_epoch(1)
    assert [i for batch in epoch_batches(10, 3, 1, 3, 0, 1) for i in batch] == list(sampler)


def test_eval_shards_cover_every_sample_once():
    shards = [i for r in range(3) for batch in eval_batches(10, 2, r, 3) for i in batch]
    assert sorted(shards) == list(range(10))


def test_collator_pads_sequences_and_builds_the_attention_mask():
    batch = Collator(pad_token_id=0)([{"input_ids": torch.tensor([5, 6, 7])}, {"input_ids": torch.tensor([8])}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    labelled = Collator(0)([{"input_ids": torch.tensor([5, 6]), "labels": torch.tensor([5, 6])}, {"input_ids": torch.tensor([8]), "labels": torch.tensor([8])}])
    assert labelled["labels"].tolist() == [[5, 6], [8, -100]]


def test_samples_are_normalised_to_int64_and_float32():
    ds = as_dataset({"input_ids": [[1, 2]], "labels": [0.5]})
    sample = ds[0]
    assert sample["input_ids"].dtype == torch.int64 and sample["labels"].dtype == torch.float32


def test_iterable_datasets_are_refused_with_the_reason():
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield torch.tensor([1])

    with pytest.raises(TypeError, match="exact resume and sharding"):
        as_dataset(Stream())


def test_a_label_column_is_the_labels_not_silently_dropped():
    columns = as_dataset({"input_ids": [[1, 2], [3, 4]], "label": [0, 1], "text": ["a", "b"]})
    assert columns[1]["labels"].item() == 1 and "text" not in columns[1]
    samples = as_dataset([{"input_ids": [1, 2], "label": 1}])
    assert samples[0]["labels"].item() == 1


def test_a_non_numeric_column_error_names_the_column():
    with pytest.raises(ValueError, match="column 'labels' holds str values"):
        as_dataset({"input_ids": [[1, 2]], "labels": ["positive"]})
