"""Engine overhead: the trainyard loop vs a hand-written PyTorch loop, side by side.

Same GPT, data, optimizer (AdamW, decay on matrices), clipping, seed and batch order
(DistributedSampler order). Rounds alternate which loop goes first; each step's time is
the interval between consecutive step ends, so the engine's data loading, target
preparation, hooks and bookkeeping are all inside it. Reports the median step time after
warm-up, the ratio engine/raw (target <= 1.03), whether the per-step losses agree, and
the cost of throughput telemetry (the engine with it replaced by a no-op; target < 1%), and
the peak-memory ratio measured in two fresh processes (target <= 1.05): peak RSS during
training above the RSS once imports and data are set up. The engine's fixed import cost
(pandas, for `metrics_summary`) is reported apart, as setup RSS, and in the whole-process
ratio.

    python benchmarks/engine_overhead.py [--rounds 5 --steps 40 --threads 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DistributedSampler

from measure import hand_written_step
from trainyard import Trainer, TrainingConfig, TrainingHooks
from trainyard.models import GPT

RESULTS = Path(__file__).resolve().parent / "results"


def make_setup(args):
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, args.vocab, (args.steps * args.batch, args.seq), generator=g)
    config = dict(vocab_size=args.vocab, max_seq_len=args.seq, d_model=args.d_model, n_layers=args.layers, n_heads=4, dropout=0.0)
    return data, config


def raw_loop(data, config, args):
    """What a careful user would write by hand."""
    torch.manual_seed(args.seed)
    model = GPT(config)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}], lr=1e-3)
    sampler = DistributedSampler(range(len(data)), num_replicas=1, rank=0, shuffle=True, seed=args.seed)
    sampler.set_epoch(0)
    order = list(sampler)
    losses, ends = [], []
    model.train()
    for i in range(0, len(order), args.batch):
        losses.append(hand_written_step(model, opt, data[order[i : i + args.batch]]).item())
        ends.append(time.perf_counter())
    return losses, ends


class _StepClock(TrainingHooks):
    def __init__(self):
        self.ends = []

    def on_batch_end(self, trainer, batch, outputs):
        self.ends.append(time.perf_counter())


class _NoTelemetry:
    """Stands in for the engine's RunTelemetry to measure what telemetry itself costs."""

    def __init__(self, device, peak):
        pass

    def start_epoch(self):
        pass

    def count_flops(self, *args):
        pass

    def window_begins(self, compiling):
        pass

    def waited(self, seconds):
        pass

    def batch(self, *args):
        pass

    def step_end(self):
        return 0.0

    def summary(self, ctx):
        return {"throughput/tokens_per_s": 0.0, "time/data_wait_frac": 0.0}


def engine_loop(data, config, args, ckdir, telemetry=True):
    if not telemetry:
        from unittest import mock

        with mock.patch("trainyard.engine.loop.RunTelemetry", _NoTelemetry):
            return engine_loop(data, config, args, ckdir)
    clock = _StepClock()
    tc = TrainingConfig(
        learning_rate=1e-3, batch_size=args.batch, epochs=1, weight_decay=0.01, max_grad_norm=1.0,
        use_lr_schedule=False, random_seed=args.seed, checkpoint_dir=str(ckdir), keep_last_n_checkpoints=1,
    )
    results = Trainer(lambda: GPT(config), config, tc, task_spec="language_modeling", hooks=clock).train({"input_ids": data})
    return results["loss_history"], clock.ends


def step_times(ends, warmup):
    return [b - a for a, b in zip(ends[warmup:], ends[warmup + 1 :])]


def _proc_status_mb(field: str) -> float:
    # VmHWM is the peak RSS of this process image; ru_maxrss would carry the parent's
    # high-water mark across fork + exec.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_of(which: str, args) -> dict[str, float]:
    """Run one loop in a fresh process: RSS once set up (imports, data), and peak RSS."""
    cmd = [sys.executable, __file__, "--memory-of", which, *_forward_args(args)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _forward_args(args):
    return ["--steps", str(args.steps), "--batch", str(args.batch), "--seq", str(args.seq), "--d-model", str(args.d_model), "--layers", str(args.layers), "--vocab", str(args.vocab), "--threads", str(args.threads)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--memory-of", choices=["raw", "engine"], help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("trainyard").setLevel(logging.WARNING)
    data, config = make_setup(args)

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        if args.memory_of:
            if args.memory_of == "engine":
                import pandas  # noqa: F401 - the engine's fixed import cost, counted in `setup`
            setup = _proc_status_mb("VmRSS")
            if args.memory_of == "raw":
                raw_loop(data, config, args)
            else:
                engine_loop(data, config, args, Path(tmp) / "mem")
            print(json.dumps({"setup": setup, "peak": _proc_status_mb("VmHWM")}))
            return

        times = {"raw": [], "engine": [], "engine_no_telemetry": []}
        loss_diff = 0.0
        for r in range(args.rounds):
            order = ["raw", "engine", "engine_no_telemetry"]
            order = order[r % 3 :] + order[: r % 3]  # each variant goes first in turn
            losses = {}
            for which in order:
                if which == "raw":
                    losses[which], ends = raw_loop(data, config, args)
                else:
                    losses[which], ends = engine_loop(data, config, args, Path(tmp) / f"{which}{r}", telemetry=which == "engine")
                times[which] += step_times(ends, args.warmup)
            loss_diff = max(loss_diff, max(abs(a - b) for a, b in zip(losses["raw"], losses["engine"])))
            same_length = len(losses["raw"]) == len(losses["engine"])

    raw_ms = statistics.median(times["raw"]) * 1e3
    engine_ms = statistics.median(times["engine"]) * 1e3
    bare_ms = statistics.median(times["engine_no_telemetry"]) * 1e3
    mem_raw, mem_engine = memory_of("raw", args), memory_of("engine", args)
    train_raw, train_engine = mem_raw["peak"] - mem_raw["setup"], mem_engine["peak"] - mem_engine["setup"]
    row = {
        "threads": args.threads,
        "model": f"GPT d{args.d_model} L{args.layers} seq{args.seq} batch{args.batch}",
        "steps_timed": len(times["raw"]),
        "raw_step_ms": round(raw_ms, 3),
        "engine_step_ms": round(engine_ms, 3),
        "step_time_ratio": round(engine_ms / raw_ms, 4),
        "engine_no_telemetry_step_ms": round(bare_ms, 3),
        "telemetry_cost": round(engine_ms / bare_ms - 1, 4),
        "max_abs_loss_diff": loss_diff,
        "losses_identical": same_length and loss_diff <= 1e-5,
        "raw_setup_rss_mb": round(mem_raw["setup"], 1),
        "engine_setup_rss_mb": round(mem_engine["setup"], 1),
        "raw_training_peak_mb": round(train_raw, 1),
        "engine_training_peak_mb": round(train_engine, 1),
        "peak_memory_ratio": round(train_engine / train_raw, 4),
        "process_peak_rss_ratio": round(mem_engine["peak"] / mem_raw["peak"], 4),
        "targets": {"step_time_ratio": 1.03, "peak_memory_ratio": 1.05, "telemetry_cost": 0.01},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "engine_overhead.json").write_text(json.dumps(row, indent=1))
    width = max(len(k) for k in row)
    for key, value in row.items():
        print(f"{key:<{width}}  {value}")
    print(f"\nwritten to {RESULTS / 'engine_overhead.json'}")


if __name__ == "__main__":
    main()
