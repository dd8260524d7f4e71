import pytest
import torch

from trainyard.engine.data import Collator, as_dataset, epoch_batches, eval_batches


@pytest.mark.parametrize("world", [2, 4])
def test_n_ranks_see_the_global_batches_of_one_process_with_n_times_the_batch(world):
    n, b = 64, 4
    for epoch in range(3):
        single = epoch_batches(n, b * world, epoch, seed=7, rank=0, world_size=1, shuffle=True)
        per_rank = [epoch_batches(n, b, epoch, seed=7, rank=r, world_size=world, shuffle=True) for r in range(world)]
        for k, global_batch in enumerate(single):
            assert sorted(i for r in range(world) for i in per_rank[r][k]) == sorted(global_batch)


def test_order_is_the_distributed_samplers_and_changes_per_epoch():
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(range(10), num_replicas=1, rank=0, shuffle=True, seed=3)
    sampler.set_epoch(1)
    assert [i for batch in epoch_batches(10, 3, 1, 3, 0, 1, True) for i in batch] == list(sampler)
    assert epoch_batches(10, 3, 0, 3, 0, 1, True) != epoch_batches(10, 3, 1, 3, 0, 1, True)


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
