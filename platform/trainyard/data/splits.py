"""Cross-validation splits."""

from __future__ import annotations

from typing import Any


def create_kfold_splits(dataset: Any, k: int = 5, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """`k` (train indices, validation indices) pairs: the validation folds are disjoint,
    cover every index once, and differ in size by at most one. Seeded shuffle."""
    import torch

    n = dataset if isinstance(dataset, int) else len(dataset["input_ids"] if isinstance(dataset, dict) else dataset)
    if not isinstance(k, int) or not 2 <= k <= n:
        raise ValueError(f"k={k!r}: k-fold needs an integer 2 <= k <= the number of samples ({n})")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    folds = [sorted(order[i::k]) for i in range(k)]
    return [(sorted(i for j, fold in enumerate(folds) if j != f for i in fold), folds[f]) for f in range(k)]
