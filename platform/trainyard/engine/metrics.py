"""Metrics: the sums an epoch or evaluation adds up, and the two public ways to get them.

    compute_metrics(logits, labels)            # or compute_metrics((logits, labels)), HF style
    evaluate_model(model, val_data)            # the numbers the Trainer reports as val/*

Both go through the loss and counting the Trainer uses (`task.compute_loss`), so a model
evaluated here gets exactly the `val/loss` its training run reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from trainyard.engine.data.collate import Collator
from trainyard.engine.data.feed import make_loader
from trainyard.engine.data.inputs import as_dataset
from trainyard.engine.data.order import eval_batches
from trainyard.engine.setup import forward_kwargs
from trainyard.engine.task import TASKS, TaskSpec, as_task_spec, compute_loss, count_targets, detect_task, extract_logits, prepare_targets


@dataclass
class MetricSums:
    """Running sums over an epoch (or evaluation) that make up its metrics."""

    loss: float = 0.0
    count: int = 0
    correct: int = 0
    seq_correct: int = 0
    num_seqs: int = 0

    def add(self, stats, count: int) -> None:
        self.loss += float(stats.loss_sum.detach())
        self.count += count
        if stats.correct is not None:
            self.correct += int(stats.correct)
        if stats.seq_correct is not None:
            self.seq_correct += int(stats.seq_correct)
        self.num_seqs += int(stats.num_seqs)

    def reduced(self, ctx) -> "MetricSums":
        """Summed over the ranks of `ctx` (a RunContext)."""
        return MetricSums(*ctx.all_reduce_sum([self.loss, self.count, self.correct, self.seq_correct, self.num_seqs]))

    def metrics(self, prefix: str, task: str) -> dict[str, float]:
        """`{prefix}/loss`, perplexity, accuracy (not for regression), exact_match (LM only);
        keys are bare (`loss`) when `prefix` is empty."""
        key = (lambda name: f"{prefix}/{name}") if prefix else (lambda name: name)
        loss = self.loss / self.count if self.count else float("nan")
        out = {key("loss"): loss, key("perplexity"): exp_or_inf(loss)}
        if task != "regression":
            out[key("accuracy")] = self.correct / self.count if self.count else float("nan")
        if task == "language_modeling":
            out[key("exact_match")] = self.seq_correct / self.num_seqs if self.num_seqs else float("nan")
        return out


class RunningSums:
    """MetricSums kept on the device while an epoch trains, so adding a batch never waits
    for the device. `host()` reads them back with one synchronisation; it does not reset
    them, so the sums stay one sequential accumulation from the epoch's start (a resumed
    run starts from the saved sums and adds in the same order: bit-identical)."""

    def __init__(self, start: MetricSums, device: torch.device):
        dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        self.count = start.count  # host: counted from the batch before it reaches the device
        self.sums = {name: torch.full((), float(getattr(start, name)), dtype=dtype, device=device) for name in _DEVICE_FIELDS}

    def add(self, stats, count: int) -> None:
        self.count += count
        self.sums["loss"] += stats.loss_sum.detach()
        for name in ("correct", "seq_correct"):
            if getattr(stats, name) is not None:
                self.sums[name] += getattr(stats, name)
        self.sums["num_seqs"] += stats.num_seqs

    def host(self) -> MetricSums:
        loss, *counts = torch.stack([self.sums[name] for name in _DEVICE_FIELDS]).tolist()
        return MetricSums(loss, self.count, *(int(c) for c in counts))


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


def compute_metrics(eval_pred: Any, labels: Any = None, task: str | None = None, pad_token_id: int | None = None) -> dict[str, float]:
    """Loss, perplexity, accuracy (and exact_match for language modelling) of predictions.

    `compute_metrics(logits, labels)` or `compute_metrics((logits, labels))` (a Hugging
    Face `EvalPrediction` works too). Tensors or numpy arrays. Language-modelling labels
    are aligned with the inputs (position t predicts t + 1; -100 is ignored), as in
    training. `task` is inferred from the shapes when not given.
    """
    logits = eval_pred
    if labels is None:
        logits, labels = _unpack(eval_pred)
    logits, labels = torch.as_tensor(logits), torch.as_tensor(labels)
    task = task or _infer_task(logits, labels)
    if task not in TASKS:
        raise ValueError(f"task={task!r} is invalid: must be one of {list(TASKS)}")
    # Without a "labels" key, language-modelling targets are the inputs with padding ignored.
    mask_padding = task == "language_modeling" and pad_token_id is not None
    batch = {"input_ids": labels} if mask_padding else {"input_ids": labels, "labels": labels}
    target = prepare_targets(task, batch, pad_token_id)
    sums = MetricSums()
    sums.add(compute_loss(task, logits, target), count_targets(task, target))
    return sums.metrics("", task)


def evaluate_model(
    model: nn.Module,
    data: Any,
    task_spec: Any = None,
    batch_size: int = 32,
    pad_token_id: int | None = None,
    device: str | None = None,
) -> dict[str, float]:
    """Evaluate `model` on `data` (any form `Trainer.train` accepts) and return
    `{loss, perplexity, accuracy, exact_match}`: what training reports as `val/*`."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"evaluate_model needs a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be an integer >= 1")
    dataset = as_dataset(data, "data")
    if dataset is None or len(dataset) == 0:
        raise ValueError("evaluate_model got no samples: pass a non-empty dataset")
    spec: TaskSpec | None = as_task_spec(task_spec)
    task = spec.name if spec is not None else detect_task(dataset[0])[0]
    if pad_token_id is None and spec is not None:
        pad_token_id = spec.preprocessing_config.get("pad_token_id")
    target_device = torch.device(device) if device else next(model.parameters()).device
    model.to(target_device)
    collate = Collator(pad_token_id)
    loader = make_loader(dataset, eval_batches(len(dataset), batch_size, 0, 1), collate, 0, False)
    sums = evaluation_sums(model, loader, task, pad_token_id, target_device, forward_kwargs(model))
    return sums.metrics("", task)


def _unpack(eval_pred: Any) -> tuple[Any, Any]:
    if hasattr(eval_pred, "predictions") and hasattr(eval_pred, "label_ids"):
        return eval_pred.predictions, eval_pred.label_ids
    if isinstance(eval_pred, Mapping) and {"logits", "labels"} <= set(eval_pred):
        return eval_pred["logits"], eval_pred["labels"]
    if isinstance(eval_pred, (tuple, list)) and len(eval_pred) == 2:
        return eval_pred
    raise TypeError(
        "compute_metrics takes (logits, labels), a (logits, labels) pair, or an object with "
        f".predictions and .label_ids; got {type(eval_pred).__name__}"
    )


def _infer_task(logits: torch.Tensor, labels: torch.Tensor) -> str:
    if labels.is_floating_point():
        return "regression"
    if logits.dim() == 3:
        return "language_modeling"
    if logits.dim() == 2 and logits.shape[-1] > 1:
        return "classification"
    raise ValueError(
        f"cannot tell the task from logits shaped {tuple(logits.shape)} and labels shaped {tuple(labels.shape)}: "
        f"pass task= one of {list(TASKS)}"
    )
