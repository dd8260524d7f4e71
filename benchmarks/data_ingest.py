"""Data ingest on Ray: memory per worker as the data grows, step time against in-memory
data, and what a sweep holds of its data.

    memory  2 Ray Train workers, 20 steps, on generated token data (sequences of 64 int64)
            at two sizes (1x and 10x rows), three ways in: a Parquet directory (streamed:
            each rank reads its row groups itself), in-memory columns (put there once as Arrow
            blocks), and a map-style Dataset of the user's own (one pickled copy per worker,
            which was every in-memory input's path before). Per worker: peak RSS (VmHWM,
            which counts the object-store pages a worker maps) and peak private memory
            (RssAnon, sampled every step); time from `train()` to the first step.
            Target: the 10x run's peak private memory within 1.1x of the 1x run's.
    speed   in-process, the same GPT, rows and batches: a Ray Dataset read from the object
            store vs a tensor in memory; median step time ratio (target <= 1.05) and the
            fraction of step time spent waiting for data. Rounds interleaved, medians.
    sweep   8 trials, 2 at a time, 1 epoch of a bag-of-tokens classifier, on in-memory
            data: the object-store bytes and the private memory of all Ray worker
            processes together that the sweep adds at its peak, and wall time, with the
            columns shared as blocks vs the same rows as a map-style Dataset (each trial
            unpickles its own copy).

Prints a table and writes benchmarks/results/data_ingest.json.

    python benchmarks/data_ingest.py [--rows 100000] [--only memory speed sweep]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

from trainyard import Trainer, TrainingConfig, TrainingHooks

RESULTS = Path(__file__).resolve().parent / "results"
VOCAB, SEQ = 512, 64
MODEL = dict(vocab_size=VOCAB, max_seq_len=SEQ, d_model=64, n_layers=2, n_heads=4, dropout=0.0)


def build_model():
    from trainyard.models import GPT

    return GPT(MODEL)


def tokens(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (rows, SEQ), generator=torch.Generator().manual_seed(seed))


def write_parquet(data: torch.Tensor, folder: Path, files: int = 8) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    per = -(-len(data) // files)
    for f in range(files):
        part = data[f * per : (f + 1) * per].numpy()
        column = pa.FixedSizeListArray.from_arrays(pa.array(part.reshape(-1)), SEQ)
        pq.write_table(pa.table({"input_ids": column}), folder / f"part-{f:03d}.parquet", row_group_size=16384)
    return folder


class Rows(torch.utils.data.Dataset):
    """A user's own map-style dataset over a tensor (not columns trainyard can share)."""

    def __init__(self, data: torch.Tensor, labels: torch.Tensor | None = None):
        self.data, self.labels = data, labels

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.data[i]} if self.labels is None else {"input_ids": self.data[i], "labels": self.labels[i]}


def _memory() -> dict[str, float]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "RssAnon"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


class Probe(TrainingHooks):
    """Per worker: peak VmHWM and peak RssAnon (sampled every step), the first step's end
    time; stops the run after `steps` steps. Writes rank{r}.json into `folder`."""

    def __init__(self, folder: str, steps: int):
        self.folder, self.steps = folder, steps

    def on_batch_end(self, trainer, batch, outputs):
        state = getattr(trainer, "_probe", None)
        if state is None:
            state = trainer._probe = {"first_step": time.time(), "anon_mb": 0.0}
        state["anon_mb"] = max(state["anon_mb"], _memory()["RssAnon"])
        if trainer.state.global_step >= self.steps and not trainer.stop_requested:
            state["hwm_mb"] = _memory()["VmHWM"]
            Path(self.folder, f"rank{trainer.context.rank}.json").write_text(json.dumps(state))
            trainer.request_stop("benchmark: enough steps")


def memory_run(data, args, tmp: Path) -> dict:
    import ray.train

    probes = tmp / "probe"
    probes.mkdir(parents=True)
    trainer = Trainer(
        build_model, MODEL, TrainingConfig(batch_size=16, epochs=1, learning_rate=1e-3, checkpoint_dir=None), task_spec="language_modeling",
        hooks=Probe(str(probes), args.steps), scaling=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(storage_path=str(tmp / "storage")),
    )
    start = time.time()
    trainer.train(data)
    ranks = [json.loads(p.read_text()) for p in sorted(probes.iterdir())]
    return {
        "worker_peak_rss_mb": max(r["hwm_mb"] for r in ranks),
        "worker_peak_private_mb": max(r["anon_mb"] for r in ranks),
        "first_step_s": min(r["first_step"] for r in ranks) - start,
    }


def memory_section(args, tmp: Path) -> list[dict]:
    rows = []
    for scale in (1, 10):
        n = args.rows * scale
        data = tokens(n)
        folder = write_parquet(data, tmp / f"parquet-{scale}")
        disk_mb = sum(f.stat().st_size for f in folder.iterdir()) / 2**20
        for way, value in (("Parquet, streamed", str(folder)), ("in-memory columns", {"input_ids": data}), ("own map-style Dataset", Rows(data))):
            result = memory_run(value, args, tmp / f"m{scale}-{len(rows)}")
            rows.append({"way": way, "rows": n, "tensor_mb": data.numel() * 8 / 2**20, "parquet_mb": disk_mb, **result})
            print(f"  memory: {way}, {n} rows: {result}", flush=True)
        del data
    return with_ratio_to_1x(rows, args.rows)


def with_ratio_to_1x(rows: list[dict], base_rows: int) -> list[dict]:
    """Each row's peak private memory against its way's 1x run (`private_vs_1x`)."""
    for row in rows:
        small = next(r for r in rows if r["way"] == row["way"] and r["rows"] == base_rows)
        row["private_vs_1x"] = row["worker_peak_private_mb"] / small["worker_peak_private_mb"]
    return rows


class StepEnds(TrainingHooks):
    def __init__(self):
        self.ends = []

    def on_batch_end(self, trainer, batch, outputs):
        self.ends.append(time.perf_counter())


def speed_run(data, args, tmp: Path) -> dict:
    ends = StepEnds()
    config = TrainingConfig(batch_size=32, epochs=1, learning_rate=1e-3, shuffle_chunk_rows=4096, checkpoint_dir=str(tmp))
    results = Trainer(build_model, MODEL, config, task_spec="language_modeling", hooks=ends).train(data)
    steps = [b - a for a, b in zip(ends.ends[5:], ends.ends[6:])]
    row = results["metrics_summary"].iloc[0]
    return {"step_ms": statistics.median(steps) * 1e3, "data_wait_frac": float(row["time/data_wait_frac"])}


def speed_section(args, tmp: Path) -> list[dict]:
    import ray

    data = tokens(args.speed_rows, seed=1)
    dataset = ray.data.from_arrow(_table(data))
    runs: dict[str, list[dict]] = {"in-memory tensor": [], "Ray Dataset": []}
    for r in range(args.rounds):
        order = list(runs) if r % 2 == 0 else list(reversed(runs))
        for way in order:
            value = {"input_ids": data} if way == "in-memory tensor" else dataset
            runs[way].append(speed_run(value, args, tmp / f"s{r}-{way.replace(' ', '_')}"))
    rows = [{"way": way, "step_ms": statistics.median(x["step_ms"] for x in xs), "data_wait_frac": statistics.median(x["data_wait_frac"] for x in xs), "rounds": len(xs)} for way, xs in runs.items()]
    for row in rows:
        row["step_time_ratio"] = row["step_ms"] / rows[0]["step_ms"]
    print(f"  speed: {rows}", flush=True)
    return rows


def _table(data: torch.Tensor):
    import pyarrow as pa

    return pa.table({"input_ids": pa.FixedSizeListArray.from_arrays(pa.array(data.numpy().reshape(-1)), SEQ)})


class RaySampler:
    """Samples object-store bytes in use and the private memory of all Ray worker
    processes together, every 0.2 s, keeping the peaks."""

    def __init__(self):
        self.store_mb = self.workers_mb = 0.0  # peaks above the levels when sampling started
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self):
        import psutil
        import ray

        total = ray.cluster_resources().get("object_store_memory", 0)

        def levels() -> tuple[float, float]:
            private = 0
            for p in psutil.process_iter(["cmdline"]):
                try:
                    if p.info["cmdline"] and p.info["cmdline"][0].startswith("ray::"):
                        private += p.memory_full_info().uss
                except (psutil.Error, IndexError):
                    continue
            return (total - ray.available_resources().get("object_store_memory", total)) / 2**20, private / 2**20

        store0, workers0 = levels()  # what earlier sections left (idle workers, objects not yet freed)
        while not self._stop.wait(0.2):
            store, workers = levels()
            self.store_mb, self.workers_mb = max(self.store_mb, store - store0), max(self.workers_mb, workers - workers0)


class BagOfTokens(torch.nn.Module):
    """The sweep's model, a classifier of token sequences: cheap, so the sweep measures
    what its data costs, not training."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(VOCAB, 8)
        self.out = torch.nn.Linear(8, 4)

    def forward(self, input_ids):
        return self.out(self.emb(input_ids).mean(1))


def sweep_section(args, tmp: Path) -> list[dict]:
    from trainyard.hpo import sweep

    data = tokens(args.sweep_rows, seed=2)
    labels = data[:, 0] % 4
    space = {"metric": "train/loss", "mode": "min", "params": {"learning_rate": {"loguniform": [3e-4, 3e-3]}}}
    base = TrainingConfig(batch_size=1024, epochs=1, keep_last_n_checkpoints=1)
    rows = []
    for way, value in (("in-memory columns (shared blocks)", {"input_ids": data, "labels": labels}), ("own map-style Dataset (a copy per trial)", Rows(data, labels))):
        start = time.perf_counter()
        with RaySampler() as sampler:
            sweep(BagOfTokens, {"vocab_size": VOCAB}, value, space=space, training_config=base, num_samples=8, max_concurrent=2,
                  scheduler="none", storage_path=tmp, name=f"sweep-{len(rows)}", seed=0, log_epochs=False)  # fmt: skip
        rows.append({"way": way, "data_mb": data.numel() * 8 / 2**20, "object_store_peak_mb": sampler.store_mb,
                     "ray_workers_private_peak_mb": sampler.workers_mb, "wall_s": time.perf_counter() - start})  # fmt: skip
        print(f"  sweep: {rows[-1]}", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=100_000, help="rows of the 1x memory run (10x for the other)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--speed-rows", type=int, default=16_384)
    p.add_argument("--sweep-rows", type=int, default=200_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--only", nargs="+", choices=["memory", "speed", "sweep"], default=["memory", "speed", "sweep"])
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    logging.getLogger("trainyard").setLevel(logging.WARNING)
    from trainyard.execution.ray_env import ensure_ray

    ensure_ray(num_cpus=2)
    out: dict = {"model": f"GPT d{MODEL['d_model']} L{MODEL['n_layers']}, sequences of {SEQ} int64 tokens"}
    with tempfile.TemporaryDirectory() as tmp:
        for section in args.only:
            out[section] = {"memory": memory_section, "speed": speed_section, "sweep": sweep_section}[section](args, Path(tmp) / section)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "data_ingest.json").write_text(json.dumps(out, indent=1))
    print_tables(out)
    print(f"\nwritten to {RESULTS / 'data_ingest.json'}")


def print_tables(out: dict) -> None:
    print("\n" + out["model"])
    if "memory" in out:
        print("\n| data in | rows | tensor MB | Parquet MB | worker peak RSS MB | worker peak private MB | private vs 1x | first step s |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in out["memory"]:
            print(f"| {r['way']} | {r['rows']:,} | {r['tensor_mb']:.0f} | {r['parquet_mb']:.0f} | {r['worker_peak_rss_mb']:.0f} | "
                  f"{r['worker_peak_private_mb']:.0f} | {r['private_vs_1x']:.2f} | {r['first_step_s']:.1f} |")  # fmt: skip
    if "speed" in out:
        print("\n| data in (in-process) | step ms | ratio | data wait |")
        print("| --- | ---: | ---: | ---: |")
        for r in out["speed"]:
            print(f"| {r['way']} | {r['step_ms']:.2f} | {r['step_time_ratio']:.3f} | {r['data_wait_frac']:.1%} |")
    if "sweep" in out:
        print("\n| 8-trial sweep data | data MB | object store, peak added MB | Ray workers' private memory, peak added MB | wall s |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for r in out["sweep"]:
            print(f"| {r['way']} | {r['data_mb']:.0f} | {r['object_store_peak_mb']:.0f} | {r['ray_workers_private_peak_mb']:.0f} | {r['wall_s']:.1f} |")


if __name__ == "__main__":
    main()
