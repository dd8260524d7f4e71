"""What a sample is, and the datasets that hold samples in memory.

A sample is a dict of tensors with `input_ids` and optionally `labels` / `attention_mask`.
Normalisation is the same for every container (integers -> int64, floats -> float32,
bools -> int64), so the same samples train identically whatever the user passed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import pyarrow as pa
import torch
from torch.utils.data import Dataset

KNOWN_KEYS = ("input_ids", "attention_mask", "labels")
# Hugging Face datasets name classification targets `label`; HF's Trainer renames it too.
ALIASES = {"label": "labels"}


@dataclass(frozen=True)
class IdRange:
    """The values a dataset's `input_ids` hold: the smallest, the largest, and whether any is
    not an integer."""

    low: float
    high: float
    floating: bool

    @staticmethod
    def of(tensors: Sequence[torch.Tensor]) -> "IdRange | None":
        tensors = [t for t in tensors if t.numel()]
        if not tensors:
            return None
        low, high = min(t.min().item() for t in tensors), max(t.max().item() for t in tensors)
        return IdRange(low, high, any(t.is_floating_point() for t in tensors))

    def check(self, vocab_size: int, where: str, task: str) -> None:
        """Refuse ids an embedding of `vocab_size` rows cannot look up, naming the fix (real
        values are refused only where the inputs must be tokens: language modelling)."""
        if self.floating and task != "language_modeling":
            return
        if self.floating:
            raise ValueError(f"{where}: input_ids hold floating-point values, but the model embeds token ids ({vocab_size} of them): "
                             "give integer ids (a model of real-valued inputs takes them without an embedding)")
        if self.low < 0 or self.high >= vocab_size:
            raise ValueError(
                f"{where}: token ids run from {self.low:g} to {self.high:g}, but the model embeds ids 0 to {vocab_size - 1} "
                f"(vocab_size {vocab_size}): raise the model's vocab_size to at least {max(self.high + 1, vocab_size):g}, or tokenize the "
                "data with the model's own tokenizer" + ("; negative ids are no tokens" if self.low < 0 else "")
            )


class SampleDataset(Dataset):
    """Map-style view with normalised dict samples; `__getitems__` fetches whole batches."""

    def __init__(self, source: Any, name: str):
        self.source = source
        self.name = name

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return to_sample(self.source[index], self.name)

    def id_range(self) -> IdRange | None:
        """The range of its input_ids where it is known without reading every sample (None)."""
        return None


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

    def id_range(self) -> IdRange | None:
        column = self.columns["input_ids"]
        return IdRange.of(column if isinstance(column, list) else [column])

    def to_arrow(self) -> Any:
        """The columns as one Arrow table (ragged sequences as list columns), or None when a
        column has more than two dimensions."""
        columns = {}
        for key, column in self.columns.items():
            if isinstance(column, list):  # ragged sequences
                columns[key] = pa.array([t.numpy() for t in column])
            elif column.dim() == 1:
                columns[key] = pa.array(column.numpy())
            elif column.dim() == 2:
                columns[key] = pa.FixedSizeListArray.from_arrays(pa.array(column.reshape(-1).numpy()), column.shape[1])
            else:
                return None
        return pa.table(columns)


def to_sample(item: Any, name: str = "data") -> dict[str, torch.Tensor]:
    if isinstance(item, Mapping):
        if "input_ids" not in item:
            raise ValueError(f"{name}: dict samples need an 'input_ids' key; got keys {sorted(item)}")
        item = {ALIASES.get(k, k): v for k, v in item.items()}
        return {k: to_tensor(item[k], name, k) for k in KNOWN_KEYS if k in item}
    if isinstance(item, (tuple, list)) and item and not _is_scalar(item[0]):
        if len(item) == 1:
            return {"input_ids": to_tensor(item[0], name, "input_ids")}
        if len(item) == 2:
            return {"input_ids": to_tensor(item[0], name, "input_ids"), "labels": to_tensor(item[1], name, "labels")}
        raise ValueError(
            f"{name}: a sample with {len(item)} parts is ambiguous; use (inputs,), (inputs, labels) or a dict "
            "with 'input_ids', 'labels', 'attention_mask'"
        )
    return {"input_ids": to_tensor(item, name, "input_ids")}


def _is_scalar(x: Any) -> bool:
    return isinstance(x, (int, float)) or (isinstance(x, torch.Tensor) and x.dim() == 0)


def to_tensor(value: Any, name: str, key: str) -> torch.Tensor:
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
        return to_tensor(column, name, key)
    items = [to_tensor(v, name, key) for v in column]
    return torch.stack(items) if items and same_shapes(items) else items


def same_shapes(tensors: Sequence[torch.Tensor]) -> bool:
    first = tensors[0].shape
    return all(t.shape == first for t in tensors)


def check_columns(found: Sequence[str], name: str, where: Any) -> None:
    if "input_ids" not in found:
        raise ValueError(
            f"{name}: {where} has no 'input_ids' column; its columns are {sorted(found)}. Name the token column "
            "input_ids (and the targets labels), or give text with a text_column to tokenize"
        )
