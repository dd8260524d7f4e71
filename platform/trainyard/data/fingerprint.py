"""A content hash of a dataset, for lineage: equal data, equal fingerprint."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np


def fingerprint(data: Any) -> str | None:
    """`sha256:<hex>` of the data's content: a file or directory path (the bytes of its
    files), columns, samples or tensors. None for None; a TypeError for anything else."""
    if data is None:
        return None
    digest = hashlib.sha256()
    _feed(digest, data)
    return "sha256:" + digest.hexdigest()


def _feed(digest: Any, value: Any) -> None:
    import torch

    if isinstance(value, (str, os.PathLike)) and _exists(value):
        path = Path(value)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            digest.update(file.relative_to(path).as_posix().encode() if path.is_dir() else b"file")
            with open(file, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    elif isinstance(value, torch.Tensor):
        _feed(digest, value.detach().cpu().numpy())
    elif isinstance(value, np.ndarray):
        digest.update(f"array{value.dtype.str}{value.shape}".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, Mapping):
        digest.update(b"map")
        for key in sorted(value, key=str):
            digest.update(json.dumps(str(key)).encode())
            _feed(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"seq{len(value)}".encode())
        for item in value:
            _feed(digest, item)
    elif isinstance(value, (str, int, float, bool)) or value is None:
        digest.update(json.dumps(value).encode())
    elif hasattr(value, "__len__") and hasattr(value, "__getitem__"):  # a map-style torch Dataset
        _feed(digest, [value[i] for i in range(len(value))])
    else:
        raise TypeError(f"cannot fingerprint {type(value).__name__}: pass columns, samples, tensors or a file path")


def _exists(value: str | os.PathLike) -> bool:
    try:
        return Path(value).exists()
    except (OSError, ValueError):  # a long text or one with NUL is not a path
        return False
