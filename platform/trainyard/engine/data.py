"""Turn whatever the user passed as data into one thing: a map-style dataset of samples,
each a dict of tensors with `input_ids` and optionally `labels` / `attention_mask`.

Accepted: a list of tensors (or of (inputs, labels) pairs, or of dicts), a TensorDataset,
any map-style Dataset, a dict of equal-length columns, a Hugging Face `datasets.Dataset`,
a `pyarrow.Table`, and a path to a Parquet file or directory. Normalisation is the same
for all of them (integers -> int64, floats -> float32), so the same samples train
identically whatever the container.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

KNOWN_KEYS = ("input_ids", "attention_mask", "labels")
# Hugging Face datasets name classification targets `label`; HF's Trainer renames it too.
ALIASES = {"label": "labels"}

_PAD_VALUES = {"attention_mask": 0, "labels": -100}
SHUFFLE_CHUNK_ROWS = 65536  # TrainingConfig.shuffle_chunk_rows' default


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


class RowSource(SampleDataset):
    """Rows read by range from storage that is never loaded whole: Parquet row groups here,
    Ray Data blocks in the object store (`trainyard.execution.ingest`). Subclasses give
    `__len__` and `read(start, stop)` (a `pyarrow.Table` of those rows).

    A batch's rows are taken from the chunk(s) of `chunk_rows` consecutive rows they lie
    in, and the last two chunks read are kept: the epoch's order (`epoch_order`) visits one
    chunk at a time, so each chunk is read about once per epoch and memory holds at most
    two of them, however large the data is.
    """

    chunk_rows = SHUFFLE_CHUNK_ROWS
    forks = True  # whether DataLoader worker processes (forked) can read it

    def __init__(self, name: str):
        super().__init__(None, name)
        self._chunks: dict[int, Any] = {}

    def read(self, start: int, stop: int) -> Any:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.name}: row {index} is out of range for {len(self)} rows")
        columns = arrow_columns(self._rows([index % len(self)]), self.name)
        return {k: v[0] for k, v in columns.items()}

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor]] | dict[str, torch.Tensor]:
        columns = arrow_columns(self._rows(indices), self.name)
        if all(isinstance(c, torch.Tensor) for c in columns.values()):
            return columns
        return [{k: v[i] for k, v in columns.items()} for i in range(len(indices))]

    def _rows(self, indices: list[int]) -> Any:
        import pyarrow as pa

        idx = np.asarray(indices, dtype=np.int64)
        chunk_of = idx // self.chunk_rows
        wanted = list(dict.fromkeys(chunk_of.tolist()))
        if len(wanted) == 1:
            return self._chunk(wanted[0]).take(pa.array(idx - wanted[0] * self.chunk_rows))
        parts, order = [], np.empty(len(idx), dtype=np.int64)
        taken = 0
        for c in wanted:  # rows of each chunk, then put back in the batch's order
            where = np.nonzero(chunk_of == c)[0]
            parts.append(self._chunk(c).take(pa.array(idx[where] - c * self.chunk_rows)))
            order[where] = np.arange(taken, taken + len(where))
            taken += len(where)
        return pa.concat_tables(parts).take(pa.array(order))

    def _chunk(self, c: int) -> Any:
        if c not in self._chunks:
            if len(self._chunks) >= 2:
                self._chunks.pop(next(iter(self._chunks)))
            self._chunks[c] = self.read(c * self.chunk_rows, min((c + 1) * self.chunk_rows, len(self)))
        return self._chunks[c]

    def __getstate__(self) -> dict[str, Any]:  # what travels to workers: where the rows are, not a cache
        return {**self.__dict__, "_chunks": {}}


class ParquetSource(RowSource):
    """A local Parquet file, directory or glob, read lazily by row groups (pyarrow)."""

    def __init__(self, files: list[str], name: str):
        import pyarrow.parquet as pq

        super().__init__(name)
        self.pieces: list[tuple[str, int, int]] = []  # (file, row group, first row)
        rows = 0
        for f in files:
            try:
                opened = pq.ParquetFile(f)
            except Exception as e:  # noqa: BLE001 - pyarrow raises several kinds for a bad file
                raise ValueError(f"{name}: cannot read {f} as Parquet ({type(e).__name__}: {e})") from e
            found = opened.schema_arrow.names
            check_columns(found, name, f)
            for g in range(opened.metadata.num_row_groups):
                self.pieces.append((f, g, rows))
                rows += opened.metadata.row_group(g).num_rows
        self.num_rows = rows
        self.firsts = np.array([p[2] for p in self.pieces], dtype=np.int64)
        self.columns = [c for c in found if ALIASES.get(c, c) in KNOWN_KEYS]

    def __len__(self) -> int:
        return self.num_rows

    def read(self, start: int, stop: int) -> Any:
        import pyarrow as pa
        import pyarrow.parquet as pq

        i = max(0, int(np.searchsorted(self.firsts, start, side="right")) - 1)
        tables, first = [], self.pieces[i][2]
        while i < len(self.pieces) and self.pieces[i][2] < stop:
            f, g, _ = self.pieces[i]
            tables.append(pq.ParquetFile(f).read_row_group(g, columns=self.columns))
            i += 1
        return pa.concat_tables(tables).slice(start - first, stop - start)


def check_columns(found: Sequence[str], name: str, where: Any) -> None:
    if "input_ids" not in found:
        raise ValueError(
            f"{name}: {where} has no 'input_ids' column; its columns are {sorted(found)}. Name the token column "
            "input_ids (and the targets labels), or give text with a text_column to tokenize"
        )


def arrow_columns(table: Any, name: str) -> dict[str, torch.Tensor | list[torch.Tensor]]:
    """A pyarrow Table's known columns as tensors: a list column of equal-length rows is one
    2-D tensor, a ragged one a list of 1-D tensors (padded by the Collator)."""
    columns = {}
    for field in table.schema.names:
        key = ALIASES.get(field, field)
        if key in KNOWN_KEYS:
            columns[key] = _arrow_tensor(table.column(field).combine_chunks(), name, key)
    return columns


def is_list_type(arrow_type: Any) -> bool:
    """Whether an Arrow column holds a sequence per row (list, large list or fixed-size list)."""
    import pyarrow as pa

    return pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type)


def _arrow_tensor(column: Any, name: str, key: str) -> torch.Tensor | list[torch.Tensor]:
    import pyarrow.compute as pc

    if not is_list_type(column.type):
        return _to_tensor(column.to_numpy(zero_copy_only=False, writable=True), name, key)
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    values = column.flatten().to_numpy(zero_copy_only=False, writable=True)  # torch wants writable memory
    if len(set(lengths.tolist())) <= 1:
        return _to_tensor(values.reshape(len(column), int(lengths[0]) if len(lengths) else 0), name, key)
    return [_to_tensor(v, name, key) for v in np.split(values, np.cumsum(lengths)[:-1])]


def local_paths(path: str | os.PathLike, name: str) -> list[str]:
    """What a local path names: the files a glob matches (in name order), else the path
    itself, absolute; a clear error when there is nothing there."""
    text = os.path.expanduser(os.fspath(path))
    if any(ch in text for ch in "*?["):
        import glob

        files = sorted(glob.glob(text, recursive=True))
        if not files:
            raise FileNotFoundError(f"{name}: the pattern {text} matches no files")
        return files
    p = Path(text).resolve()
    if not p.exists():
        raise FileNotFoundError(f"{name}: no such file or directory: {p}")
    return [str(p)]


def parquet_files(path: str | os.PathLike, name: str) -> list[str]:
    """The Parquet files a local path names: a file, a directory (its *.parquet files, in
    name order) or a glob; a clear error when there are none."""
    found = local_paths(path, name)
    if any(ch in os.fspath(path) for ch in "*?["):  # what the glob matched
        return found
    p = Path(found[0])
    if p.is_dir():
        files = sorted(str(f) for f in p.rglob("*") if f.suffix in (".parquet", ".pq"))
        if not files:
            raise FileNotFoundError(f"{name}: the directory {p} holds no .parquet files")
        return files
    if p.suffix not in (".parquet", ".pq"):
        raise ValueError(f"{name}: {p} is not a Parquet file; here a .parquet path, directory or glob is read (other formats go through trainyard.Trainer, which reads them with Ray Data)")
    return [str(p)]


def as_dataset(data: Any, name: str = "train_data") -> SampleDataset | None:
    """Wrap user data as a SampleDataset; a clear error for anything unusable."""
    if data is None or isinstance(data, SampleDataset):
        return data
    if isinstance(data, (str, os.PathLike)):
        return ParquetSource(parquet_files(data, name), name)
    if type(data).__module__.startswith("ray.data"):
        raise TypeError(
            f"{name}: a ray.data.Dataset is read through Ray; pass it to trainyard.Trainer (not the engine's "
            "Trainer), to sweep() or to a job, which read it as Ray Data blocks"
        )
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


def epoch_order(n: int, epoch: int, seed: int, chunk_rows: int = SHUFFLE_CHUNK_ROWS) -> Iterator[torch.Tensor]:
    """An epoch's order of the row indices 0..n-1, a function of `(n, seed, epoch,
    chunk_rows)` only, chunk by chunk.

    Data of at most `chunk_rows` rows is one chunk, shuffled whole: exactly
    `DistributedSampler(shuffle=True, seed=seed)`'s order. Larger data is cut into chunks of
    `chunk_rows` consecutive rows; the chunks are shuffled, then the rows inside each, so
    a reader holds one chunk at a time however large the data is.
    """
    g = torch.Generator().manual_seed(seed + epoch)
    if n <= chunk_rows:
        yield torch.randperm(n, generator=g)
        return
    for c in torch.randperm(math.ceil(n / chunk_rows), generator=g).tolist():
        start = c * chunk_rows
        inner = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch, c]).generate_state(1)[0]))
        yield start + torch.randperm(min(chunk_rows, n - start), generator=inner)


def rows_per_rank(n: int, world_size: int) -> int:
    """Rows each rank trains on per epoch: the epoch's last `n % world_size` rows (other
    rows each epoch) are dropped so every rank gets as many, and none is seen twice."""
    return n // world_size


def iter_epoch_batches(n: int, batch_size: int, epoch: int, seed: int, rank: int, world_size: int,
                       chunk_rows: int = SHUFFLE_CHUNK_ROWS, start: int = 0) -> Iterator[list[int]]:  # fmt: skip
    """This rank's batches of row indices for one epoch, from batch `start` on, computed
    chunk by chunk (never the whole epoch's list at once).

    Rank r takes positions r, r + W, r + 2W, ... of the epoch's order (`epoch_order`), up to
    the last whole multiple of W, so batch k of every rank together is batch k of a
    one-process run with batch_size * W (the one-process run also trains the last
    `n % W` rows, which the W ranks drop).
    """
    used = rows_per_rank(n, world_size) * world_size
    skip, position, pending = start * batch_size, 0, []
    for order in epoch_order(n, epoch, seed, chunk_rows):
        mine = order[(rank - position) % world_size : max(0, used - position) : world_size]
        position += len(order)
        if skip >= len(mine):  # a resumed run passes whole chunks without reading them
            skip -= len(mine)
            continue
        pending.extend(mine[skip:].tolist())
        skip = 0
        whole = len(pending) - len(pending) % batch_size
        for i in range(0, whole, batch_size):
            yield pending[i : i + batch_size]
        del pending[:whole]
    if pending:
        yield pending


def epoch_batches(n: int, batch_size: int, epoch: int, seed: int, rank: int, world_size: int,
                  chunk_rows: int = SHUFFLE_CHUNK_ROWS) -> list[list[int]]:  # fmt: skip
    """`iter_epoch_batches` as a list."""
    return list(iter_epoch_batches(n, batch_size, epoch, seed, rank, world_size, chunk_rows))


def batches_per_epoch(n: int, batch_size: int, world_size: int) -> int:
    return math.ceil(rows_per_rank(n, world_size) / batch_size)


def eval_batches(n: int, batch_size: int, rank: int, world_size: int) -> list[list[int]]:
    """Sequential shard of an evaluation set, no sample repeated (so sums reduce exactly)."""
    indices = list(range(rank, n, world_size))
    return [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]


def make_loader(dataset: Dataset, batches: Iterable[list[int]], collate: Collator, num_workers: int, pin_memory: bool):
    if not getattr(dataset, "forks", True):  # e.g. Ray's object store: a forked process cannot read it
        num_workers = 0
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
