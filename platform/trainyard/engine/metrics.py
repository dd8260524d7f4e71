"""Metrics: the sums an epoch or an evaluation adds up (`MetricSums`, on the device while an
epoch trains: `RunningSums`), and `evaluation_sums`, a model's over batches. They go through
the loss and counting training uses (`task.compute_loss`), so an evaluation gets exactly the
`val/loss` its training run reported (seed 004's `evaluate_model` and `compute_metrics`, in
`trainyard.compat.training`, are built on them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from trainyard.engine.task import compute_loss, count_targets, extract_logits, prepare_targets


@dataclass
class MetricSums:
    """Running sums over an epoch (or evaluation) that make up its metrics."""

    loss: float = 0.0
    count: int = 0  # targets
    correct: int = 0
    seq_correct: int = 0
    num_seqs: int = 0
    scored: int = 0  # targets of the batches whose predictions were measured (accuracy's denominator)

    @classmethod
    def saved(cls, sums: dict[str, Any]) -> "MetricSums":
        """From a checkpoint's sums; one saved before `scored` existed measured every batch."""
        return cls(**{"scored": sums.get("count", 0), **sums})

    def add(self, stats, count: int) -> None:
        self.loss += float(stats.loss_sum.detach())
        self.count += count
        if stats.correct is not None:
            self.correct += int(stats.correct)
            self.scored += count
        if stats.seq_correct is not None:
            self.seq_correct += int(stats.seq_correct)
        self.num_seqs += int(stats.num_seqs)

    def reduced(self, ctx) -> "MetricSums":
        """Summed over the ranks of `ctx` (a RunContext)."""
        return MetricSums(*ctx.all_reduce_sum([self.loss, self.count, self.correct, self.seq_correct, self.num_seqs, self.scored]))

    def metrics(self, prefix: str, task: str, answers: bool = True) -> dict[str, float]:
        """`{prefix}/loss`, perplexity, accuracy (not for regression), exact_match (language
        modelling on data whose labels mark answers: not free text, where a whole sequence is
        never right); keys are bare (`loss`) when `prefix` is empty."""
        key = (lambda name: f"{prefix}/{name}") if prefix else (lambda name: name)
        loss = self.loss / self.count if self.count else float("nan")
        out = {key("loss"): loss, key("perplexity"): exp_or_inf(loss)}
        if task != "regression":
            out[key("accuracy")] = self.correct / self.scored if self.scored else float("nan")
        if task == "language_modeling" and answers:
            out[key("exact_match")] = self.seq_correct / self.num_seqs if self.num_seqs else float("nan")
        return out


class RunningSums:
    """MetricSums kept on the device while an epoch trains, so adding a batch never waits
    for the device. `host()` reads them back with one synchronisation; it does not reset
    them, so the sums stay one sequential accumulation from the epoch's start (a resumed
    run starts from the saved sums and adds in the same order: bit-identical)."""

    def __init__(self, start: MetricSums, device: torch.device):
        dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        self.count, self.scored = start.count, start.scored  # host: counted from the batch before it reaches the device
        self.sums = {name: torch.full((), float(getattr(start, name)), dtype=dtype, device=device) for name in _DEVICE_FIELDS}

    def add(self, stats, count: int) -> None:
        self.count += count
        self.scored += count if stats.correct is not None else 0
        self.sums["loss"] += stats.loss_sum.detach()
        for name in ("correct", "seq_correct"):
            if getattr(stats, name) is not None:
                self.sums[name] += getattr(stats, name)
        self.sums["num_seqs"] += stats.num_seqs

    def host(self) -> MetricSums:
        loss, *counts = torch.stack([self.sums[name] for name in _DEVICE_FIELDS]).tolist()
        return MetricSums(loss, self.count, *(int(c) for c in counts), scored=self.scored)


_DEVICE_FIELDS = ("loss", "correct", "seq_correct", "num_seqs")


def exp_or_inf(x: float) -> float:
    if math.isnan(x):
        return float("nan")
    return math.exp(x) if x < 700 else float("inf")


def evaluation_sums(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    task: str,
    pad_token_id: int | None,
    device: torch.device,
    forward_kwargs: Sequence[str] = (),
    amp_dtype: torch.dtype | None = None,
    padding_forwards: int = 0,
    padding_batch: dict[str, torch.Tensor] | None = None,
) -> MetricSums:
    """Sums of `model` over collated batches, in eval mode and without gradients (the
    model's train/eval mode is restored afterwards). `padding_forwards` more forwards of
    `padding_batch` are run and not counted: a sharded model's ranks must all run as many."""
    def forward(batch: dict[str, torch.Tensor]) -> tuple[Any, dict[str, torch.Tensor]]:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            return model(batch["input_ids"], **{k: batch[k] for k in forward_kwargs if k in batch}), batch

    was_training = model.training
    model.eval()
    sums = RunningSums(MetricSums(), device)  # on the device: read back once, at the end
    try:
        with torch.no_grad():
            for batch in batches:
                count = count_targets(task, prepare_targets(task, batch, pad_token_id))  # on the host copy
                output, batch = forward(batch)
                sums.add(compute_loss(task, extract_logits(output), prepare_targets(task, batch, pad_token_id)), count)
            for _ in range(padding_forwards):
                forward(padding_batch)
    finally:
        model.train(was_training)
    return sums.host()
