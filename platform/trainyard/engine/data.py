"""Turn whatever the user passed as data into one thing: a map-style dataset of samples,
each a dict of tensors with `input_ids` and optionally `labels` / `attention_mask`.

Accepted: a list of tensors (or of (inputs, labels) pairs, or of dicts), a TensorDataset,
any map-style Dataset, a dict of equal-length columns, a Hugging Face `datasets.Dataset`,
a `pyarrow.Table`, and a path to a Parquet file or directory. Normalisation is the same
for all of them (integers -> int64, floats -> float32), so the same samples train
identically whatever the container.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch.utils.data import Dataset, DistributedSampler

KNOWN_KEYS = ("input_ids", "attention_mask", "labels")
# Hugging Face datasets name classification targets `label`; HF's Trainer renames it too.
ALIASES = {"label": "labels"}

_PAD_VALUES = {"attention_mask": 0, "labels": -100}


class SampleDataset(Dataset):
    """Map-style view with normalised dict samples; `__getitems__` fetches whole batches."""

    def __init__(self, source: Any, name: str):
        self.source = source
        self.name = name

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return to_sample(self.source[index], self.name)


class ColumnDataset(SampleDataset):
    """Columns of equal length; rectangular columns are stored as one tensor each."""

    def __init__(self, columns: Mapping[str, Any], name: str):
        if "input_ids" not in columns:
            raise ValueError(
                f"{name}: a dict/table of columns needs an 'input_ids' column; got columns {sorted(columns)}"
            )
        kept = {ALIASES.get(k, k): v for k, v in columns.items() if ALIASES.get(k, k) in KNOWN_KEYS}
        lengths = {k: len(v) for k, v in kept.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"{name}: columns must have equal lengths, got {lengths}")
        self.columns = {k: _column_tensor(v, name, k) for k, v in kept.items()}
        self.length = lengths["input_ids"]
        super().__init__(None, name)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: col[index] for k, col in self.columns.items()}

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor]] | dict[str, torch.Tensor]:
        if all(isinstance(c, torch.Tensor) for c in self.columns.values()):
            idx = torch.as_tensor(indices)
            return {k: col[idx] for k, col in self.columns.items()}
        return [self[i] for i in indices]


def as_dataset(data: Any, name: str = "train_data") -> SampleDataset | None:
    """Wrap user data as a SampleDataset; a clear error for anything unusable."""
    if data is None or isinstance(data, SampleDataset):
        return data
    if isinstance(data, (str, os.PathLike)):
        return ColumnDataset(_read_parquet(Path(data), name), name)
    if type(data).__module__.startswith("pyarrow") and hasattr(data, "to_pydict"):
        return ColumnDataset(data.to_pydict(), name)
    if isinstance(data, Mapping):
        return ColumnDataset(data, name)
    if isinstance(data, torch.utils.data.DataLoader):
        raise TypeError(
            f"{name}: pass the dataset, not a DataLoader; trainyard builds the loader itself so it "
            "can shard and resume exactly (set TrainingConfig.batch_size instead)"
        )
    if isinstance(data, torch.utils.data.IterableDataset):
        raise TypeError(
            f"{name}: IterableDataset is not supported (exact resume and sharding need a length and "
            "random access); pass a map-style Dataset, a list, or a dict of columns"
        )
    if isinstance(data, torch.Tensor):
        if data.dim() < 1:
            raise ValueError(f"{name}: a tensor of data needs a batch dimension, got shape {tuple(data.shape)}")
        return ColumnDataset({"input_ids": data}, name)
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        if len(data) == 0:
            raise ValueError(f"{name} is empty: it needs at least one sample")
        if isinstance(data, Sequence) and all(isinstance(x, torch.Tensor) for x in data) and _same_shapes(data):
            return ColumnDataset({"input_ids": torch.stack(list(data))}, name)
        to_sample(data[0], name)  # fail early, on the first sample, with a clear message
        return SampleDataset(data, name)
    raise TypeError(
        f"{name}: unsupported data type {type(data).__name__}; pass a list of tensors, a TensorDataset "
        "or other map-style Dataset, a dict of columns, a pyarrow.Table, a datasets.Dataset, or a "
        "path to a Parquet file"
    )


def to_sample(item: Any, name: str = "data") -> dict[str, torch.Tensor]:
    if isinstance(item, Mapping):
        if "input_ids" not in item:
            raise ValueError(f"{name}: dict samples need an 'input_ids' key; got keys {sorted(item)}")
        item = {ALIASES.get(k, k): v for k, v in item.items()}
        return {k: _to_tensor(item[k], name, k) for k in KNOWN_KEYS if k in item}
    if isinstance(item, (tuple, list)) and item and not _is_scalar(item[0]):
        if len(item) == 1:
            return {"input_ids": _to_tensor(item[0], name, "input_ids")}
        if len(item) == 2:
            return {"input_ids": _to_tensor(item[0], name, "input_ids"), "labels": _to_tensor(item[1], name, "labels")}
        raise ValueError(
            f"{name}: a sample with {len(item)} parts is ambiguous; use (inputs,), (inputs, labels) or a dict "
            "with 'input_ids', 'labels', 'attention_mask'"
        )
    return {"input_ids": _to_tensor(item, name, "input_ids")}


def _is_scalar(x: Any) -> bool:
    return isinstance(x, (int, float)) or (isinstance(x, torch.Tensor) and x.dim() == 0)


def _to_tensor(value: Any, name: str, key: str) -> torch.Tensor:
    try:
        t = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{name}: column {key!r} holds {type(value).__name__} values that are not numeric ({e})") from e
    if t.is_floating_point():
        return t.to(torch.float32)
    if t.dtype == torch.bool:
        return t.long()
    return t.to(torch.int64)


def _column_tensor(column: Any, name: str, key: str) -> torch.Tensor | list[torch.Tensor]:
    if isinstance(column, torch.Tensor):
        return _to_tensor(column, name, key)
    items = [_to_tensor(v, name, key) for v in column]
    return torch.stack(items) if items and _same_shapes(items) else items


def _same_shapes(tensors: Sequence[torch.Tensor]) -> bool:
    first = tensors[0].shape
    return all(t.shape == first for t in tensors)


def _read_parquet(path: Path, name: str) -> dict[str, list]:
    if not path.exists():
        raise FileNotFoundError(f"{name}: no such file or directory: {path}")
    if path.is_file() and path.suffix not in (".parquet", ".pq"):
        raise ValueError(f"{name}: {path} is not a Parquet file; paths to .parquet files or directories are supported")
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pydict()


class Collator:
    """Stacks samples into a batch, padding 1-D sequences to the longest one."""

    def __init__(self, pad_token_id: int | None):
        self.pad_token_id = pad_token_id

    def __call__(self, samples: list[dict[str, torch.Tensor]] | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if isinstance(samples, dict):  # already batched by ColumnDataset.__getitems__
            return samples
        keys = samples[0].keys()
        lengths = [s["input_ids"].shape[0] if s["input_ids"].dim() else 1 for s in samples]
        if len(set(lengths)) == 1 or samples[0]["input_ids"].dim() != 1:
            return {k: torch.stack([s[k] for s in samples]) for k in keys}
        if self.pad_token_id is None:
            raise ValueError(
                f"sequences have different lengths ({min(lengths)} to {max(lengths)} tokens), so the batch "
                "needs padding, but no pad_token_id is known: set config.pad_token_id = 0 (your model "
                "config) or pass TaskSpec(..., preprocessing_config={'pad_token_id': 0})"
            )
        batch = {k: _pad([s[k] for s in samples], self.pad_token_id if k == "input_ids" else _PAD_VALUES[k]) for k in keys}
        if "attention_mask" not in batch:
            batch["attention_mask"] = _pad([torch.ones(n, dtype=torch.int64) for n in lengths], 0)
        return batch


def _pad(seqs: list[torch.Tensor], value: int) -> torch.Tensor:
    if seqs[0].dim() != 1:
        return torch.stack(seqs)
    return torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=value)


def epoch_batches(n: int, batch_size: int, epoch: int, seed: int, rank: int, world_size: int, shuffle: bool) -> list[list[int]]:
    """This rank's batches of sample indices for one epoch.

    The order is exactly `DistributedSampler(shuffle, seed, drop_last=False)` with
    `set_epoch(epoch)`, so batch k of rank r, over all ranks, is global batch k of a
    one-process run with batch_size * world_size.
    """
    sampler = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed)
    sampler.set_epoch(epoch)
    indices = list(sampler)
    return [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]


def eval_batches(n: int, batch_size: int, rank: int, world_size: int) -> list[list[int]]:
    """Sequential shard of an evaluation set, no sample repeated (so sums reduce exactly)."""
    indices = list(range(rank, n, world_size))
    return [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]


def make_loader(dataset: Dataset, batches: list[list[int]], collate: Collator, num_workers: int, pin_memory: bool):
    # A private generator: creating the loader's iterator must not consume the global RNG,
    # or a resumed run would draw different dropout masks than the uninterrupted one.
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batches,
        collate_fn=collate,
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=torch.Generator(),
        persistent_workers=False,
    )



@dataclass
class DeviceBatch:
    """A batch moved to the training device, with what the host counted before moving it
    (so the loop never reads the device to learn a batch's size)."""

    tensors: dict[str, torch.Tensor]
    targets: torch.Tensor  # what the loss compares against, on the device
    count: int  # targets the loss is normalised by
    samples: int
    input_tokens: int  # non-pad input positions (what model FLOPs are spent on)
    seq_len: int


class WindowFeed:
    """An epoch's batches, in accumulation windows, moved to the device.

    `prefetch()` loads the next window ahead, so collating and copying it overlaps the
    device's work on the current one (the copies are asynchronous from pinned memory on
    CUDA). Time spent waiting for the loader is added up in `waited`.
    """

    def __init__(self, loader: Any, window_sizes: list[int], to_device: Callable[[dict[str, torch.Tensor]], DeviceBatch]):
        self._loader = iter(loader)
        self._sizes = list(window_sizes)
        self._to_device = to_device
        self._ahead: list[DeviceBatch] | None = None
        self.waited = 0.0

    def next_window(self) -> list[DeviceBatch]:
        if self._ahead is None:
            self.prefetch()
        window, self._ahead = self._ahead, None
        return window

    def upcoming_count(self) -> int | None:
        """Targets in the prefetched window (None when the epoch has no more)."""
        return None if self._ahead is None else sum(b.count for b in self._ahead)

    def prefetch(self) -> None:
        if self._ahead is not None or not self._sizes:
            return
        window = []
        for _ in range(self._sizes.pop(0)):
            start = time.perf_counter()
            batch = next(self._loader)
            self.waited += time.perf_counter() - start
            window.append(self._to_device(batch))
        self._ahead = window


def window_sizes(start: int, total: int, accum: int) -> list[int]:
    """Micro-batches per optimizer step from batch `start` to `total`: windows end on
    multiples of `accum` (a resumed run finishes the window it was cut in), and the last
    one may be short."""
    sizes = []
    while start < total:
        end = min((start // accum + 1) * accum, total)
        sizes.append(end - start)
        start = end
    return sizes
