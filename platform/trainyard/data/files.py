"""Data files to read when a run starts: an experiment's `data:` section with text or a
format (read by Ray Data in `trainyard.execution.ingest`; this module imports no Ray)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DataFiles:
    """Files to read with Ray Data when a run starts (an experiment's `data:` section):
    `paths` (a path, directory, glob or URI, or a list), `format` (parquet, json, csv; by
    suffix when None), and for text, `text_column` tokenized by `tokenizer`, cut or
    packed into `seq_len` blocks."""

    paths: Any
    format: str | None = None
    text_column: str | None = None
    seq_len: int | None = None
    pack: bool = True
    tokenizer: Any = None
