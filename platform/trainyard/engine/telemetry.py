"""Throughput telemetry: what every epoch reports about speed, and MFU done right.

Per epoch (columns of `metrics_summary`, the epoch line and every tracker):

    throughput/tokens_per_s    non-pad target tokens trained per second (all ranks)
    throughput/samples_per_s   samples per second (all ranks)
    time/step_ms               median optimizer-step time of the epoch (data loading included)
    time/data_wait_frac        share of the epoch's training time spent waiting for batches
    time/train_s               the epoch's training time (its steps, without evaluation)
    mfu                        model FLOPs utilization, where the peak is known
    memory/peak_gb             peak CUDA memory allocated (rank 0), on CUDA only

Times are wall-clock seconds of the training steps only (not validation or checkpoints).
With `compile_mode`, the step in which torch.compile compiles the model is left out of the
rates, MFU and step time (it is in `time/train_s`).
Counts come from the host-side targets, so telemetry adds no device synchronisation.

MFU = model FLOPs per second / (peak FLOP/s per device x devices). Model FLOPs per
processed token are the model's own `flops_per_token(seq_len)` when it has one (the
built-in GPT: 6N plus the attention term, PaLM appendix B), else counted once with
`torch.utils.flop_counter.FlopCounterMode` over a forward and backward pass of the first
batch. The peak comes from `TrainingConfig.peak_flops`, else from `PEAK_FLOPS` by device
name and compute dtype; where neither knows (a CPU), there is no `mfu`.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from trainyard.engine.task import extract_logits

# Dense peak FLOP/s per device (NVIDIA datasheets; sparsity figures are not peaks of dense
# training). Matched in order by substring of torch.cuda.get_device_name(): specific first.
PEAK_FLOPS: list[tuple[str, dict[str, float]]] = [
    ("H100 NVL", {"bf16": 835e12, "fp16": 835e12, "tf32": 417.5e12, "fp32": 60e12}),
    ("H100 PCIe", {"bf16": 756e12, "fp16": 756e12, "tf32": 378e12, "fp32": 51.2e12}),
    ("H100", {"bf16": 989.4e12, "fp16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12}),  # SXM
    ("H200", {"bf16": 989.4e12, "fp16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12}),
    ("B200", {"bf16": 2250e12, "fp16": 2250e12, "tf32": 1100e12}),
    ("A100", {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12}),
    ("L40S", {"bf16": 362e12, "fp16": 362e12, "tf32": 183e12, "fp32": 91.6e12}),
    ("L4", {"bf16": 121e12, "fp16": 121e12, "tf32": 60e12, "fp32": 30.3e12}),
    ("A10G", {"bf16": 125e12, "fp16": 125e12, "tf32": 62.5e12, "fp32": 31.2e12}),  # the A10's figures
    ("A10", {"bf16": 125e12, "fp16": 125e12, "tf32": 62.5e12, "fp32": 31.2e12}),
    ("V100", {"fp16": 125e12, "fp32": 15.7e12}),
]


def compute_dtype(device: torch.device, amp_dtype: torch.dtype | None) -> str:
    """The dtype the model's matmuls run in: bf16 / fp16 under autocast, else tf32 or fp32."""
    if amp_dtype is torch.bfloat16:
        return "bf16"
    if amp_dtype is torch.float16:
        return "fp16"
    if device.type == "cuda" and torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    return "fp32"


def peak_flops(device: torch.device, dtype: str, override: float | None = None) -> float | None:
    """Peak FLOP/s of one `device` in `dtype`: `override` if given, else the table; None if unknown."""
    if override is not None:
        return float(override)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAK_FLOPS:
        if key in name:
            return peaks.get(dtype)
    return None


def flops_per_token_fn(
    model: nn.Module, sample_batch: dict[str, torch.Tensor], forward_kwargs: tuple[str, ...] = (), autocast: Callable[[], Any] = contextlib.nullcontext
) -> Callable[[int], float] | None:
    """Training FLOPs (forward + backward) per processed token, as a function of sequence
    length: the model's own formula, else counted once on `sample_batch`."""
    formula = getattr(model, "flops_per_token", None)
    if callable(formula):
        return formula
    per_token = count_flops_per_token(model, sample_batch, forward_kwargs, autocast)
    return None if per_token is None else (lambda _seq_len: per_token)


def count_flops_per_token(
    model: nn.Module, batch: dict[str, torch.Tensor], forward_kwargs: tuple[str, ...] = (), autocast: Callable[[], Any] = contextlib.nullcontext
) -> float | None:
    """FlopCounterMode over one forward and backward pass of `batch`, per input token.

    Runs in eval mode (no dropout, so no random numbers are drawn) and with
    `torch.autograd.grad`, so no `.grad` is touched: the run it measures is not disturbed."""
    params = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False, custom_mapping=_cpu_attention_formulas()) as counter:
            with autocast():
                output = model(batch["input_ids"], **{k: batch[k] for k in forward_kwargs if k in batch})
            logits = extract_logits(output)
            if params and logits.requires_grad:
                torch.autograd.grad(logits.float().sum(), params, allow_unused=True)
        total = counter.get_total_flops()
    except Exception:  # noqa: BLE001 - a model the counter cannot follow simply has no MFU
        return None
    finally:
        model.train(was_training)
    tokens = input_tokens(batch, None)
    return total / tokens if total and tokens else None


def _cpu_attention_formulas() -> dict[Any, Any]:
    """FlopCounterMode counts the CUDA attention kernels but not the CPU one that
    scaled_dot_product_attention runs on a CPU: give it the same counts."""
    from torch.utils import flop_counter

    def forward(query, key, value, *args, out_val=None, **kwargs):
        return flop_counter.sdpa_flop_count(query.shape, key.shape, value.shape)

    def backward(grad_out, query, key, value, *args, out_val=None, **kwargs):
        return flop_counter.sdpa_backward_flop_count(grad_out.shape, query.shape, key.shape, value.shape)

    forward._get_raw = backward._get_raw = True  # they read the shapes themselves
    aten = torch.ops.aten
    pairs = {"_scaled_dot_product_flash_attention_for_cpu": forward, "_scaled_dot_product_flash_attention_for_cpu_backward": backward}
    return {getattr(aten, name): formula for name, formula in pairs.items() if hasattr(aten, name)}


def input_tokens(batch: dict[str, torch.Tensor], pad_token_id: int | None) -> int:
    """Input positions a batch spends model FLOPs on: non-pad tokens of token-id inputs,
    else one per sample. Read from host tensors (the batch before it is moved)."""
    ids = batch["input_ids"]
    if ids.dim() < 2 or ids.is_floating_point():
        return len(ids)
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    if pad_token_id is not None:
        return int((ids != pad_token_id).sum())
    return ids.numel()


def sequence_length(batch: dict[str, torch.Tensor]) -> int:
    ids = batch["input_ids"]
    return ids.shape[1] if ids.dim() >= 2 and not ids.is_floating_point() else 1


class EpochTelemetry:
    """Counts and clocks of one epoch on this rank; `summary` reduces them over ranks."""

    def __init__(self, device: torch.device):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)  # memory/peak_gb is this epoch's
        self.start = time.perf_counter()
        self.last_step_end = self.start
        self.step_times: list[float] = []
        self.data_wait = 0.0
        self.tokens = 0  # non-pad target tokens
        self.samples = 0
        self.flops = 0.0  # model FLOPs of the tokens processed
        self.train_time = 0.0
        self.left_out: tuple[float, int, int, float] | None = None  # a step left out of the rates: seconds, tokens, samples, FLOPs

    def waited(self, seconds: float) -> None:
        self.data_wait += seconds

    def batch(self, samples: int, target_tokens: int, input_tokens: int, seq_len: int, flops_per_token: Callable[[int], float] | None) -> None:
        self.samples += samples
        self.tokens += target_tokens
        if flops_per_token is not None:
            self.flops += input_tokens * flops_per_token(seq_len)

    def step_end(self) -> float:
        """Mark an optimizer step's end; returns its duration in seconds."""
        now = time.perf_counter()
        duration = now - self.last_step_end
        self.step_times.append(duration)
        self.last_step_end = now
        self.train_time = now - self.start
        return duration

    def counts(self) -> tuple[int, int, float]:
        return self.tokens, self.samples, self.flops

    def leave_out_last_step(self, counts_before: tuple[int, int, float]) -> None:
        """Leave the step that just ended out of the rates: its time (torch.compile compiled
        the model in it: seconds to minutes, which would make a compiled run's first epoch
        look many times slower than it trains) and what it trained."""
        tokens, samples, flops = counts_before
        self.left_out = (self.step_times.pop(), self.tokens - tokens, self.samples - samples, self.flops - flops)
        self.tokens, self.samples, self.flops = counts_before

    def summary(self, ctx: Any, peak: float | None, counted: bool) -> dict[str, float]:
        """The epoch's telemetry columns; tokens, samples and FLOPs summed over ranks."""
        counts, step_times, left_out_s = [self.tokens, self.samples, self.flops], self.step_times, 0.0
        if self.left_out is not None and step_times:
            left_out_s = self.left_out[0]
        elif self.left_out is not None:  # the epoch had no other step: it is counted after all
            counts, step_times = [a + b for a, b in zip(counts, self.left_out[1:])], [self.left_out[0]]
        tokens, samples, flops = ctx.all_reduce_sum(counts)
        elapsed = max(self.train_time, 1e-9)
        timed = max(self.train_time - left_out_s, 1e-9)  # the steps the counts are of
        row = {
            "throughput/tokens_per_s": tokens / timed,
            "throughput/samples_per_s": samples / timed,
            "time/step_ms": 1000 * statistics.median(step_times) if step_times else float("nan"),
            "time/data_wait_frac": self.data_wait / elapsed,
            "time/train_s": elapsed,
        }
        if peak is not None and counted:
            row["mfu"] = flops / timed / (peak * ctx.world_size)
        if ctx.device.type == "cuda":
            row["memory/peak_gb"] = torch.cuda.max_memory_allocated(ctx.device) / 1e9
        return row


class RunTelemetry:
    """A run's telemetry, owned in one place: the device's peak, the model's FLOPs per token
    (counted once, at the first window), this epoch's counts and clocks, and the step in
    which torch.compile compiled (left out of the rates)."""

    def __init__(self, device: torch.device, peak: float | None):
        self.device, self.peak = device, peak
        self.flops_per_token: Callable[[int], float] | None = None
        self.epoch: EpochTelemetry | None = None
        self._counted = False
        self._compiling: tuple[int, int, float] | None = None  # the counts before the compiling step

    def start_epoch(self) -> None:
        self.epoch = EpochTelemetry(self.device)

    def count_flops(self, model: nn.Module, batch: dict[str, torch.Tensor], forward_kwargs: tuple[str, ...], autocast: Callable[[], Any], sharded: bool) -> None:
        """Once per run, where MFU can be reported (the peak is known). Counting runs an extra
        forward and backward: a sharded model's would all-gather and reduce-scatter, so there
        only a model's own `flops_per_token` gives MFU."""
        if self._counted or self.peak is None:
            return
        self._counted = True
        if not sharded or callable(getattr(model, "flops_per_token", None)):
            self.flops_per_token = flops_per_token_fn(model, batch, forward_kwargs, autocast)

    def window_begins(self, compiling: bool) -> None:
        """A window starts; `compiling`: torch.compile compiles in its step."""
        self._compiling = self.epoch.counts() if compiling else None

    def waited(self, seconds: float) -> None:
        """Time the epoch spent waiting for its batches."""
        self.epoch.waited(seconds)

    def batch(self, samples: int, target_tokens: int, input_tokens: int, seq_len: int) -> None:
        self.epoch.batch(samples, target_tokens, input_tokens, seq_len, self.flops_per_token)

    def step_end(self) -> float:
        """The optimizer step ended; returns its duration in seconds."""
        duration = self.epoch.step_end()
        if self._compiling is not None:
            self.epoch.leave_out_last_step(self._compiling)
            self._compiling = None
        return duration

    def summary(self, ctx: Any) -> dict[str, float]:
        return self.epoch.summary(ctx, self.peak, self.flops_per_token is not None)


TELEMETRY_KEYS = (
    "throughput/tokens_per_s", "throughput/samples_per_s", "time/step_ms", "time/data_wait_frac", "time/train_s", "mfu", "memory/peak_gb",
)


def run_summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The whole run's telemetry from its epoch rows: rates weighted by each epoch's
    training time (so tokens_per_s is all tokens / all training time), the median of the
    epochs' step times, the highest memory peak."""
    rows = [r for r in rows if "time/train_s" in r]
    if not rows:
        return {}
    weights = [r["time/train_s"] for r in rows]
    total = sum(weights) or 1.0
    out = {"time/train_s": sum(weights), "time/step_ms": statistics.median(r["time/step_ms"] for r in rows)}
    for key in ("throughput/tokens_per_s", "throughput/samples_per_s", "time/data_wait_frac", "mfu"):
        if all(key in r for r in rows):
            out[key] = sum(r[key] * w for r, w in zip(rows, weights)) / total
    if all("memory/peak_gb" in r for r in rows):
        out["memory/peak_gb"] = max(r["memory/peak_gb"] for r in rows)
    return out
