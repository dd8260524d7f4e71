"""From batches of row indices to tensors on the device: the DataLoader, and the window
feed that prefetches the next accumulation window while the device works."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch.utils.data import Dataset

from trainyard.engine.data.collate import Collator
from trainyard.engine.data.samples import IdRange
from trainyard.engine.task import count_targets, prepare_targets
from trainyard.engine.telemetry import input_tokens, sequence_length


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


def to_device(batch: dict[str, torch.Tensor], device: torch.device, task: str, pad_token_id: int | None,
              check_vocab: int | None = None) -> DeviceBatch:  # fmt: skip
    """Count on the host what the step needs to know, then move the batch (asynchronously
    from pinned memory) and build its targets there. `check_vocab`: refuse token ids the
    model's embedding cannot look up (data whose range was not known before the first step)."""
    if check_vocab is not None:
        found = IdRange.of([batch["input_ids"]])
        if found is not None:
            found.check(check_vocab, "train_data", task)
    tensors = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    return DeviceBatch(
        tensors, prepare_targets(task, tensors, pad_token_id), count_targets(task, prepare_targets(task, batch, pad_token_id)),
        samples=len(batch["input_ids"]), input_tokens=input_tokens(batch, pad_token_id), seq_len=sequence_length(batch),
    )


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
        # The next window's target count summed over ranks, where the step before it carried
        # that sum in its own collective (the loop sets it, and clears it at the window).
        self.summed_count: torch.Tensor | None = None

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
