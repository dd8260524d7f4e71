"""What is being learned: `TaskSpec`, its auto-detection, targets, loss and metrics.

Losses are computed as sums with a separate count of targets, so that gradient
accumulation and data-parallel workers can normalise by the count of the whole optimizer
step: batch 2 x accumulation 4 then equals batch 8 exactly, whatever padding is in it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
import torch.nn.functional as F

TASKS = ("language_modeling", "classification", "regression")
IGNORE_INDEX = -100


@dataclass(frozen=True)
class TaskSpec:
    """`name` is one of TASKS; `preprocessing_config` may carry `pad_token_id`."""

    name: str = "language_modeling"
    modality: str = "text"
    preprocessing_config: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in TASKS:
            raise ValueError(f"TaskSpec.name={self.name!r} is invalid: must be one of {list(TASKS)}")
        if not isinstance(self.modality, str) or not self.modality:
            raise ValueError(f"TaskSpec.modality={self.modality!r} is invalid: must be a non-empty string such as 'text'")
        if not isinstance(self.preprocessing_config, Mapping):
            raise ValueError(
                f"TaskSpec.preprocessing_config={self.preprocessing_config!r} is invalid: must be a dict"
            )
        pad = self.preprocessing_config.get("pad_token_id")
        if pad is not None and (not isinstance(pad, int) or isinstance(pad, bool)):
            raise ValueError(f"TaskSpec.preprocessing_config['pad_token_id']={pad!r} is invalid: must be an int")
        object.__setattr__(self, "preprocessing_config", dict(self.preprocessing_config))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TaskSpec":
        return cls(**dict(data))


def as_task_spec(value: Any) -> TaskSpec | None:
    """A TaskSpec from a TaskSpec, a task name, a dict of its fields, or None (detect)."""
    if value is None or isinstance(value, TaskSpec):
        return value
    if isinstance(value, str):
        return TaskSpec(name=value)
    if isinstance(value, Mapping):
        return TaskSpec.from_dict(value)
    raise TypeError(f"task_spec must be a TaskSpec, a task name or None, got {type(value).__name__}")


def detect_task(sample: Mapping[str, torch.Tensor]) -> tuple[str, str]:
    """Guess the task from one normalised sample; returns (task name, the reason)."""
    labels = sample.get("labels")
    if labels is None:
        return "language_modeling", "samples have input_ids and no labels"
    if labels.is_floating_point():
        return "regression", f"labels are {labels.dtype}"
    if labels.dim() >= 1 and labels.numel() > 1:
        if labels.shape == sample["input_ids"].shape:
            return "language_modeling", "labels have the shape of input_ids"
        raise ValueError(
            f"labels of shape {tuple(labels.shape)} fit no task with input_ids of shape {tuple(sample['input_ids'].shape)}: language "
            "modelling needs labels shaped like input_ids (-100 where there is no loss), classification one integer per sample, "
            "regression float values; fix the labels column, or pass task_spec to say which task it is"
        )
    return "classification", "labels are one integer per sample"


def confirm_task(name: str, logits: torch.Tensor, reason: str, explicit: bool) -> tuple[str, str]:
    """Check the model output fits the task; an auto-detected task may be refined."""
    if not explicit and name == "classification" and logits.dim() <= 2 and logits.shape[-1] == 1:
        return "regression", reason + " and the model outputs one value per sample"
    expected = {"language_modeling": 3, "classification": 2}.get(name)
    if expected is not None and logits.dim() != expected:
        origin = "TaskSpec" if explicit else f"auto-detected ({reason})"
        shape = "(batch, seq_len, vocab_size)" if expected == 3 else "(batch, num_classes)"
        raise ValueError(
            f"task {name!r} ({origin}) needs model logits shaped {shape}, but the model returned "
            f"{tuple(logits.shape)}; pass task_spec=TaskSpec(name=...) with one of {list(TASKS)} "
            "that matches the model"
        )
    return name, reason


@dataclass
class TaskChoice:
    """The task a run trains, and why: given (a TaskSpec, or the checkpoint resumed from) or
    detected from the first sample, then confirmed against the model's first logits."""

    name: str
    reason: str
    explicit: bool  # given, not detected: the model's output may not refine it
    confirmed: bool = False
    # Language modelling on data with labels (an answer after a masked prompt): exact_match,
    # the share of whole answers right, means something. On free text it does not.
    answers: bool = True

    def confirm(self, logits: torch.Tensor) -> None:
        """Check the first logits fit the task (an auto-detected task may be refined)."""
        self.name, self.reason = confirm_task(self.name, logits, self.reason, self.explicit)
        self.confirmed = True


def choose_task(task_spec: TaskSpec | None, sample: Mapping[str, torch.Tensor]) -> TaskChoice:
    """The task a TaskSpec gives, else the one `sample` shows (confirmed at the first logits)."""
    if task_spec is not None:
        task = TaskChoice(task_spec.name, "given by TaskSpec", explicit=True)
    else:
        task = TaskChoice(*detect_task(sample), explicit=False)
    task.answers = "labels" in sample
    return task


def extract_logits(output: Any) -> torch.Tensor:
    """The logits in a model output: a tensor, a tuple (logits first), or .logits / ["logits"]."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if isinstance(output, Mapping) and "logits" in output:
        return output["logits"]
    if hasattr(output, "logits"):
        return output.logits
    raise TypeError(
        f"cannot find logits in the model output ({type(output).__name__}): return a tensor, a tuple whose "
        "first item is the logits, or an object / dict with .logits / ['logits']"
    )


def prepare_targets(name: str, batch: dict[str, torch.Tensor], pad_token_id: int | None) -> torch.Tensor:
    """The tensor the loss compares against, with ignored positions set to IGNORE_INDEX."""
    if name == "language_modeling":
        input_ids = batch["input_ids"]
        if "labels" in batch:
            targets = batch["labels"].clone()
        else:
            targets = input_ids.clone()
            if pad_token_id is not None:
                targets = targets.masked_fill(input_ids == pad_token_id, IGNORE_INDEX)
        if "attention_mask" in batch:
            targets = targets.masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
        # Position t predicts token t + 1; the last position predicts nothing. Shifting the
        # targets (not slicing the logits) keeps the logits, the largest tensor of a
        # language model's step, contiguous: no copy of them is made.
        return F.pad(targets[:, 1:], (0, 1), value=IGNORE_INDEX)
    if "labels" not in batch:
        raise ValueError(f"task {name!r} needs a 'labels' column (or a (inputs, labels) pair per sample)")
    labels = batch["labels"]
    return labels.float() if name == "regression" else labels.long().reshape(-1)


def count_targets(name: str, targets: torch.Tensor) -> int:
    if name == "language_modeling":
        return int((targets != IGNORE_INDEX).sum())
    return targets.numel()


@dataclass
class BatchStats:
    """Sums over one batch, reduced later into epoch metrics."""

    loss_sum: torch.Tensor  # differentiable
    correct: torch.Tensor | None  # targets predicted right; None: not measured (a loss-only step)
    seq_correct: torch.Tensor | None  # sequences with every target right (LM exact match)
    num_seqs: int | torch.Tensor  # sequences with targets (a device tensor for LM: never read per batch)


def compute_loss(name: str, logits: torch.Tensor, targets: torch.Tensor, score: bool = True) -> BatchStats:
    """The loss sum of a batch and, with `score`, what accuracy and exact match count (the
    predictions: an argmax over the logits, the largest read of the step after the loss)."""
    if name == "language_modeling":
        predicted = None
        if score:
            with torch.no_grad():  # on the logits as computed (bf16 under AMP): half the bytes to read
                predicted = logits.argmax(-1)
        logits = logits.float()
        loss_sum = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        if predicted is None:
            return BatchStats(loss_sum, None, None, 0)
        with torch.no_grad():
            valid = targets != IGNORE_INDEX
            hit = (predicted == targets) & valid
            correct = hit.sum()
            # A sequence counts as exactly right when all its scored tokens are right; with
            # teacher forcing this equals greedy decoding of those tokens.
            has_targets = valid.any(dim=1)
            seq_correct = ((hit == valid).all(dim=1) & has_targets).sum()
            num_seqs = has_targets.sum()
        return BatchStats(loss_sum, correct, seq_correct, num_seqs)
    logits = logits.float()
    if name == "classification":
        loss_sum = F.cross_entropy(logits, targets, reduction="sum")
        if not score:
            return BatchStats(loss_sum, None, None, targets.shape[0])
        with torch.no_grad():
            correct = (logits.argmax(-1) == targets).sum()
        return BatchStats(loss_sum, correct, None, targets.shape[0])
    preds = logits.reshape(targets.shape) if logits.numel() == targets.numel() else logits
    if preds.shape != targets.shape:
        raise ValueError(
            f"regression needs one model output per label value: the model returned {tuple(logits.shape)} "
            f"for labels shaped {tuple(targets.shape)}"
        )
    return BatchStats(F.mse_loss(preds, targets, reduction="sum"), None, None, targets.shape[0])
