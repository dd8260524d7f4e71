"""A 2-worker elastic run on a Ray cluster of three nodes (a head without CPUs, two worker
nodes of one CPU, each with its own scratch directory), checkpoints in S3; one worker node
is removed in the middle of epoch 2. Run by tests/execution/test_node_loss.py in a process
of its own (the cluster is its own Ray); writes what happened as JSON to argv[1]."""

import json
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace


def main(out: Path, bucket: str) -> None:
    from ray.cluster_utils import Cluster

    health = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500, "health_check_failure_threshold": 4}  # a lost node is known in ~2 s
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "_system_config": health})
    scratch = [out / f"node{i}" for i in (1, 2)]
    nodes = []
    for folder in scratch:
        folder.mkdir()
        nodes.append(cluster.add_node(num_cpus=1, env_vars={"TMPDIR": str(folder)}))
    cluster.wait_for_nodes()
    import ray
    import ray.train

    ray.init(address=cluster.address, logging_level="ERROR")
    from trainyard import Trainer, TrainingConfig

    from tests.execution.hooks import MarkAt, RecordSteps
    from tests.helpers import VOCAB, lm_factory, lm_samples

    marker, steps = out / "marker", out / "steps.jsonl"
    removed = {}

    def remove_when_marked():
        while not marker.exists():
            time.sleep(0.05)
        removed["at"] = time.time()
        cluster.remove_node(nodes[1])

    threading.Thread(target=remove_when_marked, daemon=True).start()
    cfg = TrainingConfig(learning_rate=1e-2, batch_size=4, epochs=3, random_seed=3, checkpoint_every_n_steps=2)
    data, val = lm_samples(48), lm_samples(8, seed=4)
    run = ray.train.RunConfig(name="nodeloss", storage_path=f"s3://{bucket}/runs", failure_config=ray.train.FailureConfig(max_failures=2))
    results = Trainer(lm_factory(dropout=0.0), SimpleNamespace(vocab_size=VOCAB), cfg, hooks=[MarkAt(str(marker), 2, 9), RecordSteps(str(steps))],
                      scaling=(1, 2), run_config=run).train(data, val)
    whole = Trainer(lm_factory(dropout=0.0), SimpleNamespace(vocab_size=VOCAB), cfg.replace(checkpoint_dir=str(out / "whole"), global_batch_size=8)).train(data, val)
    recorded = [json.loads(line) for line in steps.read_text().splitlines()]
    losses = lambda r: r["metrics_summary"][["train/loss", "val/loss"]].values.ravel().tolist()  # noqa: E731
    after = [t for _, _, t in recorded if t > removed["at"] + 3]  # the marked step holds 3 s before the removal shows
    (out / "result.json").write_text(json.dumps({
        "losses": losses(results), "uninterrupted": losses(whole), "steps": recorded, "removed_at": removed["at"],
        "recovery_s": after[0] - removed["at"] if after else None, "checkpoint": results["checkpoint_path"],
        "checkpoints": sorted(p.rsplit("/", 2)[-2] for p in _listing(f"s3://{bucket}/runs/nodeloss") if "/checkpoint_e" in p and p.endswith("/COMPLETE")),
        "scratch_files": sorted(str(p.relative_to(out)) for folder in scratch for p in folder.rglob("*") if p.is_file()),
    }))
    ray.shutdown()
    cluster.shutdown()


def _listing(location: str) -> list[str]:
    import pyarrow.fs

    fs, root = pyarrow.fs.FileSystem.from_uri(location)
    return [info.path for info in fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True))]


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
