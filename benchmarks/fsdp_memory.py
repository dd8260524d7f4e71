"""FSDP memory: what each of 2 Ray Train workers holds under DDP and under FSDP.

A GPT big enough that its state dominates (d768, 8 layers, vocab 8192: 63M parameters),
a few steps on CPU. In every worker, from the tensors' own storage (each storage counted
once; a shard's local tensor for FSDP): bytes of parameters, of gradients (measured mid
accumulation window, when they exist) and of optimizer state; the worker's peak RSS; the
median step time. Target: FSDP's per-rank state <= 0.55x DDP's.

    python benchmarks/fsdp_memory.py [--layers 8 --d-model 768 --steps 4]
    python benchmarks/fsdp_memory.py --malloc-mmap-threshold 1048576

On CPU, glibc keeps freed blocks of up to 32 MB on its heap once it has seen such blocks
freed (its dynamic mmap threshold), and FSDP frees an all-gathered block of parameters
(28 MB here) twice a micro-batch: peak RSS then counts what the allocator retains, not
what the tensors hold. `--malloc-mmap-threshold` fixes the threshold for the workers
(MALLOC_MMAP_THRESHOLD_), so freed blocks go back to the system: RSS then follows the
tensors, at the cost of page faults (slower steps). GPUs have their own caching allocator.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(ROOT / "platform"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from measure import peak_rss_mb  # noqa: E402


def _storage_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if t is None:
            continue
        local = t.to_local() if hasattr(t, "to_local") else t
        storage = local.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def make_probe(out_dir: str):
    from trainyard import TrainingHooks

    class Probe(TrainingHooks):
        """Measures what this rank holds; writes <out_dir>/<rank>.json at the end."""

        def __init__(self):
            self.ends, self.grads = [], 0

        def on_batch_end(self, trainer, batch, outputs):
            if trainer.state.batch_in_epoch % 2 == 1:  # mid window: the gradients so far exist
                self.grads = max(self.grads, _storage_bytes(p.grad for p in trainer.model.parameters()))
            else:
                self.ends.append(time.perf_counter())

        def on_train_end(self, trainer, results):
            optimizer = [v for state in trainer.optimizer.state.values() for v in state.values() if hasattr(v, "untyped_storage")]
            report = {
                "params": _storage_bytes(trainer.model.parameters()), "grads": self.grads, "optimizer": _storage_bytes(optimizer),
                "peak_rss_mb": peak_rss_mb(), "step_s": statistics.median(b - a for a, b in zip(self.ends[1:], self.ends[2:])),
            }
            Path(out_dir, f"{trainer.context.rank}.json").write_text(json.dumps(report))

    return Probe()


def run(parallelism: str, args) -> dict:
    import ray.train
    import torch

    from trainyard import Trainer, TrainingConfig
    from trainyard.models import GPT

    config = {"vocab_size": args.vocab, "max_seq_len": 64, "d_model": args.d_model, "n_layers": args.layers, "n_heads": 12}
    data = {"input_ids": torch.randint(0, args.vocab, (args.steps * 2 * 2 * 2, 64), generator=torch.Generator().manual_seed(0))}
    out = tempfile.mkdtemp()
    tc = TrainingConfig(learning_rate=1e-4, batch_size=2, gradient_accumulation_steps=2, epochs=1, parallelism=parallelism, keep_last_n_checkpoints=1)
    Trainer(lambda: GPT(config), config, tc, task_spec="language_modeling", hooks=make_probe(out), scaling=2,
            run_config=ray.train.RunConfig(storage_path=tempfile.mkdtemp())).train(data)
    ranks = [json.loads(Path(out, f"{r}.json").read_text()) for r in range(2)]
    state = [r["params"] + r["grads"] + r["optimizer"] for r in ranks]
    return {
        "params_mb": ranks[0]["params"] / 2**20, "grads_mb": ranks[0]["grads"] / 2**20, "optimizer_mb": ranks[0]["optimizer"] / 2**20,
        "state_mb_per_rank": max(state) / 2**20, "peak_rss_mb": max(r["peak_rss_mb"] for r in ranks),
        "step_s": statistics.median(r["step_s"] for r in ranks),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--malloc-mmap-threshold", type=int, default=None, help="bytes; sets MALLOC_MMAP_THRESHOLD_ for the workers")
    args = p.parse_args()
    if args.malloc_mmap_threshold is not None:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)  # read by each worker at its start (Ray starts here)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "benchmarks"), str(ROOT / "platform"), os.environ.get("PYTHONPATH")]))
    from trainyard.execution.ray_env import ensure_ray
    from trainyard.models import GPT

    ensure_ray(num_cpus=2)
    n_params = sum(t.numel() for t in GPT({"vocab_size": args.vocab, "max_seq_len": 64, "d_model": args.d_model, "n_layers": args.layers, "n_heads": 12}).parameters())
    rows = {parallelism: run(parallelism, args) for parallelism in ("ddp", "fsdp")}
    result = {"model": f"GPT d{args.d_model} L{args.layers} vocab {args.vocab} ({n_params / 1e6:.0f}M parameters)", "workers": 2, **rows,
              "state_ratio": rows["fsdp"]["state_mb_per_rank"] / rows["ddp"]["state_mb_per_rank"],
              "rss_ratio": rows["fsdp"]["peak_rss_mb"] / rows["ddp"]["peak_rss_mb"], "step_ratio": rows["fsdp"]["step_s"] / rows["ddp"]["step_s"],
              "malloc_mmap_threshold": args.malloc_mmap_threshold, "targets": {"state_ratio": 0.55}}
    RESULTS.mkdir(exist_ok=True)
    name = "fsdp_memory.json" if args.malloc_mmap_threshold is None else f"fsdp_memory_mmap{args.malloc_mmap_threshold}.json"
    (RESULTS / name).write_text(json.dumps(result, indent=1))
    allocator = "glibc defaults" if args.malloc_mmap_threshold is None else f"MALLOC_MMAP_THRESHOLD_={args.malloc_mmap_threshold}"
    print(f"{result['model']}, 2 Ray Train workers ({allocator}), per rank:\n")
    print("| | DDP | FSDP | FSDP / DDP |\n| --- | --- | --- | --- |")
    for key, label in (("params_mb", "parameters"), ("grads_mb", "gradients"), ("optimizer_mb", "optimizer state"),
                       ("state_mb_per_rank", "all state (target <= 0.55x)"), ("peak_rss_mb", "peak RSS"), ("step_s", "step time")):
        unit = "s" if key == "step_s" else "MB"
        d, f = rows["ddp"][key], rows["fsdp"][key]
        print(f"| {label} | {d:,.2f} {unit} | {f:,.2f} {unit} | {f / d:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
