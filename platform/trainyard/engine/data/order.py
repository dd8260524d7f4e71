"""Which rows each rank trains on, in which order: a function of (rows, seed, epoch) only,
so a resumed run (on any rank) continues with exactly the rows that were next."""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch

from trainyard.engine.config import SHUFFLE_CHUNK_ROWS


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
