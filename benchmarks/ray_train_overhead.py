"""Ray Train overhead: the engine in-process vs 1 Ray Train worker vs 2, same global batch.

Each configuration trains the same GPT on the same data with the same global batch (2
workers get half the batch each), one CPU thread per process. Reports the steady-state
median step time (between consecutive step ends, after warm-up) and its ratio to
in-process, and the start-up seconds from calling `train()` to the end of the first step. Rounds are
interleaved (order alternating) and medians taken, since these machines are noisy.
Targets: 1 worker within 5% of in-process (Ray's docs claim 2.5%); start-up reported.

    python benchmarks/ray_train_overhead.py [--steps 60]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from trainyard import Trainer, TrainingConfig, TrainingHooks
from trainyard.models import GPT

RESULTS = Path(__file__).resolve().parent / "results"


class StepTimes(TrainingHooks):
    """Appends each step's wall-clock end to a file (rank 0), readable by the driver."""

    def __init__(self, path: str):
        self.path = path

    def on_batch_end(self, trainer, batch, outputs):
        if getattr(trainer, "_rank0", None) is None:
            try:
                import ray.train

                trainer._rank0 = ray.train.get_context().get_world_rank() == 0
            except Exception:  # noqa: BLE001 - not in a Ray worker
                trainer._rank0 = True
        if trainer._rank0:
            with open(self.path, "a") as f:
                f.write(f"{time.time()}\n")


def run(workers: int, data, config, args, tmp: Path) -> dict:
    import ray.train

    tmp.mkdir(parents=True, exist_ok=True)
    stamps = tmp / f"steps-{workers}.txt"
    batch = args.batch // max(workers, 1)
    tc = TrainingConfig(learning_rate=1e-3, batch_size=batch, epochs=1, use_lr_schedule=False, random_seed=0, checkpoint_dir=None if workers else str(tmp / "local"))
    kwargs = {}
    if workers:
        kwargs = dict(
            scaling=ray.train.ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
            run_config=ray.train.RunConfig(storage_path=str(tmp / "storage")),
        )
    trainer = Trainer(lambda: GPT(config), config, tc, task_spec="language_modeling", hooks=StepTimes(str(stamps)), **kwargs)
    start = time.time()
    trainer.train({"input_ids": data})
    ends = [float(x) for x in stamps.read_text().split()]
    steps = [b - a for a, b in zip(ends[args.warmup :], ends[args.warmup + 1 :])]
    return {
        "workers": workers,
        "step_ms": statistics.median(steps) * 1e3,
        "startup_s": ends[0] - start,
        "total_s": time.time() - start,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=16, help="global batch")
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)  # in-process gets what a 1-CPU Ray worker gets
    logging.getLogger("trainyard").setLevel(logging.WARNING)
    from trainyard.execution.ray_env import ensure_ray

    t0 = time.time()
    ensure_ray(num_cpus=2)
    ray_init_s = time.time() - t0
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 256, (args.steps * args.batch, args.seq), generator=g)
    config = dict(vocab_size=256, max_seq_len=args.seq, d_model=args.d_model, n_layers=args.layers, n_heads=4)
    samples: dict[int, list[dict]] = {0: [], 1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):  # interleaved, order alternating, against drift
            for w in (0, 1, 2) if r % 2 == 0 else (2, 1, 0):
                samples[w].append(run(w, data, config, args, Path(tmp) / f"r{r}"))
    rows = []
    for w, runs in samples.items():
        rows.append({
            "workers": w,
            "step_ms": statistics.median(x["step_ms"] for x in runs),
            "startup_s": statistics.median(x["startup_s"] for x in runs),
            "total_s": statistics.median(x["total_s"] for x in runs),
            "rounds": len(runs),
        })
    base = rows[0]["step_ms"]
    for row in rows:
        row["step_time_ratio"] = row["step_ms"] / base
    out = {
        "model": f"GPT d{args.d_model} L{args.layers} seq{args.seq}, global batch {args.batch}, {args.steps} steps",
        "ray_init_s": ray_init_s,
        "rows": rows,
        "target": "1 worker step_time_ratio <= 1.05",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ray_train_overhead.json").write_text(json.dumps(out, indent=1))
    print(out["model"], f"| ray.init {ray_init_s:.1f}s")
    print(f"{'run':<12}{'step ms':>10}{'ratio':>8}{'start-up s':>12}{'total s':>9}")
    for r in rows:
        name = "in-process" if r["workers"] == 0 else f"{r['workers']} worker(s)"
        print(f"{name:<12}{r['step_ms']:>10.2f}{r['step_time_ratio']:>8.3f}{r['startup_s']:>12.1f}{r['total_s']:>9.1f}")
    print(f"\nwritten to {RESULTS / 'ray_train_overhead.json'}")


if __name__ == "__main__":
    main()
