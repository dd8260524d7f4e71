"""Loading user data files into the column dicts the engine trains on."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

FORMATS = (".parquet", ".pq", ".jsonl", ".csv", ".pt")


def load_dataset(data_asset: str | os.PathLike) -> dict[str, list]:
    """Read a Parquet, JSONL, CSV or `.pt` file into columns (`input_ids`, `labels`, ...).

    JSON/CSV cells holding lists (e.g. "[1, 2, 3]") are parsed; a `.pt` file holds a dict
    of columns or a list of samples, loaded with `weights_only=True`.
    """
    path = Path(data_asset)
    if not path.exists():
        raise FileNotFoundError(f"data asset {path} not found")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq") or path.is_dir():
        return pq.read_table(path).to_pydict()
    if suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return _columns(rows, path)
    if suffix == ".csv":
        with open(path, newline="") as f:
            rows = [{k: _cell(v) for k, v in row.items()} for row in csv.DictReader(f)]
        return _columns(rows, path)
    if suffix == ".pt":
        import torch

        obj = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(obj, dict):
            return {k: list(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return {"input_ids": list(obj)}
        raise ValueError(f"{path}: a .pt data asset holds a dict of columns or a list of samples, not {type(obj).__name__}")
    raise ValueError(f"{path}: unsupported data format {suffix!r}; use one of {list(FORMATS)}")


def _cell(value: str) -> Any:
    text = value.strip()
    if text.startswith("[") or text.lstrip("-").replace(".", "", 1).isdigit():
        try:
            return json.loads(text)
        except ValueError:
            return value
    return value


def _columns(rows: list[dict[str, Any]], path: Path) -> dict[str, list]:
    if not rows:
        raise ValueError(f"{path} holds no rows")
    keys = list(rows[0])
    for i, row in enumerate(rows):
        if list(row) != keys:
            raise ValueError(f"{path}: row {i} has columns {sorted(row)}, the first row has {sorted(keys)}")
    return {k: [row[k] for row in rows] for k in keys}
