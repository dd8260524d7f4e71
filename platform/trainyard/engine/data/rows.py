"""Rows read by range from storage that is never loaded whole: Parquet files here, Ray
Data blocks in the object store (`trainyard.execution.ingest`, a RowSource too)."""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from trainyard.engine.config import SHUFFLE_CHUNK_ROWS
from trainyard.engine.data.samples import ALIASES, KNOWN_KEYS, IdRange, SampleDataset, check_columns, to_tensor


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
            self._chunks[c] = self.read(c * self.chunk_rows, min((c + 1) * self.chunk_rows, len(self)))
        return self._chunks[c]

    def __getstate__(self) -> dict[str, Any]:  # what travels to workers: where the rows are, not a cache
        return {**self.__dict__, "_chunks": {}}


class ParquetSource(RowSource):
    """A local Parquet file, directory or glob, read lazily by row groups (pyarrow)."""

    def __init__(self, files: list[str], name: str):
        super().__init__(name)
        self.pieces: list[tuple[str, int, int]] = []  # (file, row group, first row)
        rows, ranges = 0, []
        for f in files:
            try:
                opened = pq.ParquetFile(f)
            except Exception as e:  # noqa: BLE001 - pyarrow raises several kinds for a bad file
                raise ValueError(f"{name}: cannot read {f} as Parquet ({type(e).__name__}: {e})") from e
            found = opened.schema_arrow.names
            check_columns(found, name, f)
            ranges.append(_statistics_range(opened.metadata))
            for g in range(opened.metadata.num_row_groups):
                self.pieces.append((f, g, rows))
                rows += opened.metadata.row_group(g).num_rows
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
            tables.append(pq.ParquetFile(f).read_row_group(g, columns=self.columns))
            i += 1
        return pa.concat_tables(tables).slice(start - first, stop - start)


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
