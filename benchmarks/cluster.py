"""Clusters as they are: data streamed from object storage, checkpoints saved there, and a
node lost mid-run. Every part is real and started here: an S3 endpoint on loopback (moto's
server, reached through AWS_ENDPOINT_URL) and, for the node loss, a three-node Ray cluster
(`ray.cluster_utils.Cluster`, in a process of its own).

    streaming   2 Ray Train workers, 20 steps of a small GPT on generated sequences of 64
                int64 tokens at 1x and 10x rows: Parquet in S3 and on local disk, each rank
                reading its row groups itself, against the same rows in memory (put into
                the object store once). Per worker: peak private memory (RssAnon, sampled
                every step) and its ratio to the 1x run; time from `train()` to the first
                step. Target: 10x within 1.1x of 1x for the streamed ways.
    checkpoint  the same 2 workers and a GPT of about 40 MB of checkpoint (weights and
                AdamW state), a checkpoint every step into S3 and onto local disk, against
                none: seconds a checkpoint adds to a step (median over the run's steps).
    node loss   tests/execution/node_loss_run.py: an elastic 1-2 worker run with checkpoints
                in S3 loses a worker node in the middle of epoch 2: seconds from the loss to
                the next training step (the run holds 3 s at the marked step before the
                removal, included); a node is added back once the run goes on alone:
                seconds from then to its first 2-worker step; steps redone.

Prints the tables and writes benchmarks/results/cluster.json.

    python benchmarks/cluster.py [--rows 50000] [--only streaming checkpoint nodeloss]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from data_ingest import MODEL, SEQ, memory_run, tokens, with_ratio_to_1x, write_parquet
from trainyard import Trainer, TrainingConfig, TrainingHooks

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
BUCKET = "bench"


def start_s3() -> tuple[object, object]:
    """moto's S3 server on loopback, set in this process's environment (Ray's workers,
    started after, inherit it); (server, boto3 client)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    import boto3

    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    return server, client


def streaming_section(args, tmp: Path, s3) -> list[dict]:
    rows = []
    for scale in (1, 10):
        n = args.rows * scale
        data = tokens(n)
        folder = write_parquet(data, tmp / f"parquet-{scale}")
        for f in sorted(folder.iterdir()):
            s3.upload_file(str(f), BUCKET, f"data-{scale}/{f.name}")
        for way, value in (("Parquet in S3, streamed", f"s3://{BUCKET}/data-{scale}"), ("Parquet on local disk, streamed", str(folder)),
                           ("in memory (object store)", {"input_ids": data})):
            result = memory_run(value, args, tmp / f"s{scale}-{len(rows)}")
            rows.append({"way": way, "rows": n, "tensor_mb": data.numel() * 8 / 2**20, **result})
            print(f"  streaming: {way}, {n} rows: {result}", flush=True)
        del data
    return with_ratio_to_1x(rows, args.rows)


class StepEnds(TrainingHooks):
    """Rank 0's optimizer step ends, written to `path` when the run ends."""

    def __init__(self, path: str):
        self.path, self.ends = path, []

    def on_step_end(self, trainer, step, metrics):
        if trainer.context.rank == 0:
            self.ends.append(time.perf_counter())
            Path(self.path).write_text(json.dumps(self.ends))


def checkpoint_section(args, tmp: Path) -> list[dict]:
    import ray.train

    model = dict(MODEL, d_model=256, n_layers=4)
    data = tokens(16 * 2 * (args.checkpoint_steps + 1))
    rows = []
    for way, storage, every in (("none", str(tmp / "none"), None), ("local disk", str(tmp / "local"), 1), ("S3", f"s3://{BUCKET}/ckpt", 1)):
        ends = tmp / f"ends-{len(rows)}.json"

        def build(config=model):
            from trainyard.models import GPT

            return GPT(config)

        config = TrainingConfig(batch_size=16, epochs=1, learning_rate=1e-3, checkpoint_every_n_steps=every, keep_last_n_checkpoints=2)
        Trainer(build, model, config, task_spec="language_modeling", hooks=StepEnds(str(ends)),
                scaling=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
                run_config=ray.train.RunConfig(storage_path=storage)).train({"input_ids": data})
        times = json.loads(ends.read_text())
        steps = [b - a for a, b in zip(times[1:], times[2:])]  # the first step compiles nothing but warms up
        rows.append({"way": way, "step_s": statistics.median(steps), "steps": len(steps)})
        print(f"  checkpoint: {way}: {rows[-1]}", flush=True)
    size = sum(p.numel() for p in build().parameters()) * 4 * 3 / 2**20  # weights + AdamW's two moments, float32
    for row in rows:
        row["checkpoint_mb"] = size if row["way"] != "none" else 0.0
        row["added_s"] = row["step_s"] - rows[0]["step_s"]
    return rows


def nodeloss_section(args, tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = "10"
    out = tmp / "nodeloss"
    out.mkdir()
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "tests.execution.node_loss_run", str(out), BUCKET], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    got = json.loads((out / "result.json").read_text())
    trained = [step for step, _, _ in got["steps"]]
    result = {"recovery_s": got["recovery_s"], "regrowth_s": got["regrowth_s"], "steps_redone": len(trained) - len(set(trained)), "steps": trained[-1],
              "losses_equal_uninterrupted": all(abs(a - b) <= 1e-5 for a, b in zip(got["losses"], got["uninterrupted"])),
              "wall_s": time.time() - start}
    print(f"  node loss: {result}", flush=True)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=50_000, help="rows of the 1x streaming run (10x for the other)")
    p.add_argument("--steps", type=int, default=20, help="steps of each streaming run")
    p.add_argument("--checkpoint-steps", type=int, default=12)
    p.add_argument("--only", nargs="+", choices=["streaming", "checkpoint", "nodeloss"], default=["streaming", "checkpoint", "nodeloss"])
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    logging.getLogger("trainyard").setLevel(logging.WARNING)
    server, s3 = start_s3()
    out: dict = {"model": f"GPT d{MODEL['d_model']} L{MODEL['n_layers']}, sequences of {SEQ} int64 tokens"}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if "nodeloss" in args.only:  # first: its cluster is a Ray of its own, before this process starts one
                out["nodeloss"] = nodeloss_section(args, Path(tmp))
            if {"streaming", "checkpoint"} & set(args.only):
                from trainyard.execution.ray_env import ensure_ray

                ensure_ray(num_cpus=2)
            if "streaming" in args.only:
                out["streaming"] = streaming_section(args, Path(tmp) / "streaming", s3)
            if "checkpoint" in args.only:
                out["checkpoint"] = checkpoint_section(args, Path(tmp) / "checkpoint")
    finally:
        server.stop()
    RESULTS.mkdir(exist_ok=True)
    written = RESULTS / "cluster.json"
    if written.exists() and set(args.only) != {"streaming", "checkpoint", "nodeloss"}:  # --only: the other sections' last results stay
        out = {**json.loads(written.read_text()), **out}
    written.write_text(json.dumps(out, indent=1))
    print_tables(out)
    print(f"\nwritten to {RESULTS / 'cluster.json'}")


def print_tables(out: dict) -> None:
    print("\n" + out["model"])
    if "streaming" in out:
        print("\n| data in (2 workers) | rows | tensor MB | worker peak private MB | private vs 1x | first step s |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for r in out["streaming"]:
            print(f"| {r['way']} | {r['rows']:,} | {r['tensor_mb']:.0f} | {r['worker_peak_private_mb']:.0f} | {r['private_vs_1x']:.2f} | {r['first_step_s']:.1f} |")
    if "checkpoint" in out:
        print("\n| checkpoint every step (2 workers) | checkpoint MB | step s (median) | added by the checkpoint, s |")
        print("| --- | ---: | ---: | ---: |")
        for r in out["checkpoint"]:
            print(f"| {r['way']} | {r['checkpoint_mb']:.0f} | {r['step_s']:.3f} | {r['added_s']:.3f} |")
    if "nodeloss" in out:
        r = out["nodeloss"]
        print("\n| node lost mid-epoch, then back (elastic 1-2, S3) | loss to next step, s | node back to a 2-worker step, s | steps redone | losses as uninterrupted |")
        print("| --- | ---: | ---: | ---: | --- |")
        regrowth = f"{r['regrowth_s']:.1f}" if r.get("regrowth_s") is not None else "-"
        print(f"| 3-node cluster on one machine | {r['recovery_s']:.1f} | {regrowth} | {r['steps_redone']} | {r['losses_equal_uninterrupted']} |")


if __name__ == "__main__":
    main()
