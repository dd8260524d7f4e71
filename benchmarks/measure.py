"""Pieces the benchmarks share (importable by their child processes and Ray workers: each
benchmark puts this directory on their path): the RSS reader, and the training step a
careful user writes by hand, which the engine is measured against."""

from __future__ import annotations

from pathlib import Path


def peak_rss_mb() -> float:
    """This process's peak resident set size (VmHWM), in MiB; NaN where /proc is absent."""
    status = Path("/proc/self/status")
    if not status.exists():
        return float("nan")
    for line in status.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def hand_written_step(model, opt, x):
    """One step of a hand-written next-token loop: loss, backward, clip at 1.0, optimizer
    step, zero the gradients. Returns the loss (on the device: the caller reads it)."""
    import torch
    import torch.nn.functional as F

    logits = model(x)
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss
