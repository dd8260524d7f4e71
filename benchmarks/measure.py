"""Small measuring helpers shared by the benchmarks (importable by their child processes
and Ray workers: each benchmark puts this directory on their path)."""

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
