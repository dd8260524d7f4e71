"""`as_dataset`: whatever the user passed as data, as one map-style dataset of samples.

Accepted: a list of tensors (or of (inputs, labels) pairs, or of dicts), a TensorDataset,
any map-style Dataset, a dict of equal-length columns, a Hugging Face `datasets.Dataset`,
a `pyarrow.Table`, and a path to a Parquet file, directory or glob (read lazily, by row
group). Anything else is refused naming what to pass instead.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import torch

from trainyard.engine.data.rows import ParquetSource, parquet_files
from trainyard.engine.data.samples import ColumnDataset, SampleDataset, same_shapes, to_sample


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
        if isinstance(data, Sequence) and all(isinstance(x, torch.Tensor) for x in data) and same_shapes(data):
            return ColumnDataset({"input_ids": torch.stack(list(data))}, name)
        to_sample(data[0], name)  # fail early, on the first sample, with a clear message
        return SampleDataset(data, name)
    raise TypeError(
        f"{name}: unsupported data type {type(data).__name__}; pass a list of tensors, a TensorDataset "
        "or other map-style Dataset, a dict of columns, a pyarrow.Table, a datasets.Dataset, or a "
        "path to a Parquet file"
    )
