"""Rows read by range from storage that is never loaded whole: Parquet files here, Ray
Data blocks in the object store (`trainyard.execution.ingest`, a RowSource too)."""

from __future__ import annotations

import glob
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from trainyard.engine.config import SHUFFLE_CHUNK_ROWS
from trainyard.engine.data.samples import ALIASES, KNOWN_KEYS, IdRange, SampleDataset, check_columns, to_tensor
from trainyard.storage import files_under, is_uri, open_input, suffix


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
                pa.default_memory_pool().release_unused()  # else the allocator keeps what each chunk used: memory grows with the data
            self._chunks[c] = self.read(c * self.chunk_rows, min((c + 1) * self.chunk_rows, len(self)))
        return self._chunks[c]

    def __getstate__(self) -> dict[str, Any]:  # what travels to workers: where the rows are, not a cache
        return {**self.__dict__, "_chunks": {}}


class ParquetSource(RowSource):
    """Parquet files (local, NFS or object storage: any `trainyard.storage` location), read
    lazily by row groups (pyarrow): only a file's footer when opened, then only the byte
    ranges of the row groups a batch's chunk lies in. What travels to a Ray worker is where
    the rows are; each process opens the files itself."""

    open_files = 16  # per process: footers kept in memory (a remote open is a request)

    def __init__(self, files: list[str], name: str):
        super().__init__(name)
        self.pieces: list[tuple[str, int, int]] = []  # (file, row group, first row)
        self._opened: dict[str, Any] = {}
        self.forks = not any(is_uri(f) for f in files)  # an object store's client is not safe across a fork
        rows, ranges = 0, []
        with ThreadPoolExecutor(8) as pool:  # many remote footers: a request each, concurrently
            metadata = list(pool.map(lambda f: self._file(f, name).metadata, files))
        for f, meta in zip(files, metadata):
            found = meta.schema.to_arrow_schema().names
            check_columns(found, name, f)
            ranges.append(_statistics_range(meta))
            for g in range(meta.num_row_groups):
                self.pieces.append((f, g, rows))
                rows += meta.row_group(g).num_rows
        self.num_rows = rows
        self.firsts = np.array([p[2] for p in self.pieces], dtype=np.int64)
        self.columns = [c for c in found if ALIASES.get(c, c) in KNOWN_KEYS]
        known = [r for r in ranges if r is not None]
        self._id_range = None if len(known) < len(ranges) or not known else IdRange(
            min(r.low for r in known), max(r.high for r in known), any(r.floating for r in known))

    def __len__(self) -> int:
        return self.num_rows

    def id_range(self) -> IdRange | None:
        """From the files' row-group statistics (None where a writer left them out)."""
        return self._id_range

    def read(self, start: int, stop: int) -> Any:
        i = max(0, int(np.searchsorted(self.firsts, start, side="right")) - 1)
        tables, first = [], self.pieces[i][2]
        while i < len(self.pieces) and self.pieces[i][2] < stop:
            f, g, _ = self.pieces[i]
            tables.append(self._file(f, self.name).read_row_group(g, columns=self.columns))
            i += 1
        return pa.concat_tables(tables).slice(start - first, stop - start)

    def _file(self, location: str, name: str) -> Any:
        opened = self._opened.get(location)
        if opened is None:
            try:
                opened = pq.ParquetFile(open_input(location))
            except FileNotFoundError:
                raise
            except Exception as e:  # noqa: BLE001 - pyarrow raises several kinds for a bad file
                raise ValueError(f"{name}: cannot read {location} as Parquet ({type(e).__name__}: {e})") from e
            if len(self._opened) >= self.open_files:
                self._opened.pop(next(iter(self._opened)))
            self._opened[location] = opened
        return opened

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_opened": {}}


def _statistics_range(metadata: Any) -> IdRange | None:
    """The input_ids values' range from a Parquet file's row-group statistics (its leaf
    column: `input_ids`, or `input_ids.list.element` for sequences); None when any row
    group has none."""
    schema = metadata.schema
    leaf = next((j for j in range(len(schema)) if schema.column(j).path.split(".")[0] == "input_ids"), None)
    if leaf is None or metadata.num_row_groups == 0:
        return None
    lows, highs = [], []
    for g in range(metadata.num_row_groups):
        column = metadata.row_group(g).column(leaf)
        stats = column.statistics
        if column.num_values == 0:
            continue
        if stats is None or not stats.has_min_max:
            return None
        lows.append(stats.min)
        highs.append(stats.max)
    floating = schema.column(leaf).physical_type in ("FLOAT", "DOUBLE")
    return IdRange(min(lows), max(highs), floating) if lows else None


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
    return pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type)


def _arrow_tensor(column: Any, name: str, key: str) -> torch.Tensor | list[torch.Tensor]:
    if not is_list_type(column.type):
        return to_tensor(column.to_numpy(zero_copy_only=False, writable=True), name, key)
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    values = column.flatten().to_numpy(zero_copy_only=False, writable=True)  # torch wants writable memory
    if len(set(lengths.tolist())) <= 1:
        return to_tensor(values.reshape(len(column), int(lengths[0]) if len(lengths) else 0), name, key)
    return [to_tensor(v, name, key) for v in np.split(values, np.cumsum(lengths)[:-1])]


def local_paths(path: str | os.PathLike, name: str) -> list[str]:
    """What a local path names: the files a glob matches (in name order), else the path
    itself, absolute; a clear error when there is nothing there."""
    text = os.path.expanduser(os.fspath(path))
    if any(ch in text for ch in "*?["):
        files = sorted(glob.glob(text, recursive=True))
        if not files:
            raise FileNotFoundError(f"{name}: the pattern {text} matches no files")
        return files
    p = Path(text).resolve()
    if not p.exists():
        raise FileNotFoundError(f"{name}: no such file or directory: {p}")
    return [str(p)]


def parquet_files(path: str | os.PathLike, name: str) -> list[str]:
    """The Parquet files a location names: a file, a folder (its *.parquet files at any
    depth, in name order) or a local glob; local paths or URIs (`s3://...`); a clear error
    when there are none."""
    if is_uri(path):
        if any(ch in os.fspath(path) for ch in "*?["):
            raise ValueError(f"{name}: {path}: patterns are matched for local paths only; name the folder that holds the files")
        found = files_under(path, PARQUET, name)
    elif any(ch in os.fspath(path) for ch in "*?["):
        return local_paths(path, name)  # what the glob matched
    else:
        local_paths(path, name)  # a clear error where there is nothing
        found = files_under(path, PARQUET, name)
    if len(found) == 1 and suffix(found[0]) not in PARQUET:
        raise ValueError(f"{name}: {found[0]} is not a Parquet file; here a .parquet path, directory or glob is read (other formats go through trainyard.Trainer, which reads them with Ray Data)")
    return found


PARQUET = (".parquet", ".pq")
