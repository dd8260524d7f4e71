"""A 2-worker elastic run on a Ray cluster of three nodes (a head without CPUs, two worker
nodes of one CPU, each with its own scratch directory), checkpoints in S3; one worker node
is removed in the middle of epoch 2, and added back once the run goes on alone. Then a run
of a fixed 2 workers loses a node, which comes back 3 s later. Run by
tests/execution/test_node_loss.py in a process of its own (the cluster is its own Ray);
writes what happened as JSON to argv[1]."""

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

    from tests.execution.hooks import HoldAloneAfterCheckpoint, MarkAt, RecordSteps
    from tests.helpers import VOCAB, lm_factory, lm_samples

    marker, steps = out / "marker", out / "steps.jsonl"
    removed = {}

    cfg = TrainingConfig(learning_rate=1e-2, batch_size=4, epochs=3, random_seed=3, checkpoint_every_n_steps=2)
    data, val = lm_samples(48), lm_samples(8, seed=4)
    run = ray.train.RunConfig(name="nodeloss", storage_path=f"s3://{bucket}/runs", failure_config=ray.train.FailureConfig(max_failures=2))
    # Elastic 1-2 workers; Ray looks for room to grow every 2 s (60 s by default). Alone, the run
    # holds after its first checkpoint until Ray grows it (its coordinator sees nodes on a 20 s tick).
    scaling = ray.train.ScalingConfig(num_workers=(1, 2), elastic_resize_monitor_interval_s=2)
    hooks = [MarkAt(str(marker), 2, 9), RecordSteps(str(steps)), HoldAloneAfterCheckpoint(90)]
    training = _in_thread(lambda: Trainer(lm_factory(dropout=0.0), SimpleNamespace(vocab_size=VOCAB), cfg, hooks=hooks, scaling=scaling,
                                          run_config=run).train(data, val))
    while not marker.exists() and training.is_alive():
        time.sleep(0.05)
    removed["at"] = time.time()
    cluster.remove_node(nodes[1])
    alive = [scratch[0]]  # the scratch folders of nodes still up at the end (a removed node's disk goes with it)
    while 1 not in _worlds(steps) and training.is_alive():
        time.sleep(0.05)  # the run goes on alone
    removed["added_at"] = time.time()
    node3 = _add_node(cluster, out / "node3", alive)  # a new machine in the lost one's place
    results = training.result()

    # A fixed count (2 workers) loses a node: the run waits until capacity returns, then goes on.
    marker2, steps2 = out / "marker2", out / "steps2.jsonl"
    fixed = ray.train.RunConfig(name="fixed", storage_path=f"s3://{bucket}/runs", failure_config=ray.train.FailureConfig(max_failures=2))
    training = _in_thread(lambda: Trainer(lm_factory(dropout=0.0), SimpleNamespace(vocab_size=VOCAB), cfg, scaling=2, run_config=fixed,
                                          hooks=[MarkAt(str(marker2), 2, 9), RecordSteps(str(steps2))]).train(data, val))
    while not marker2.exists() and training.is_alive():
        time.sleep(0.05)
    cluster.remove_node(node3)
    alive.remove(out / "node3")
    time.sleep(3)  # no room for 2 workers: Ray waits for it
    _add_node(cluster, out / "node4", alive)
    fixed_results = training.result()
    whole = Trainer(lm_factory(dropout=0.0), SimpleNamespace(vocab_size=VOCAB), cfg.replace(checkpoint_dir=str(out / "whole"), global_batch_size=8)).train(data, val)
    recorded = [json.loads(line) for line in steps.read_text().splitlines()]
    losses = lambda r: r["metrics_summary"][["train/loss", "val/loss"]].values.ravel().tolist()  # noqa: E731
    after = [t for _, _, t in recorded if t > removed["at"] + 3]  # the marked step holds 3 s before the removal shows
    (out / "result.json").write_text(json.dumps({
        "losses": losses(results), "uninterrupted": losses(whole), "steps": recorded, "removed_at": removed["at"],
        "recovery_s": after[0] - removed["at"] if after else None, "checkpoint": results["checkpoint_path"], "added_at": removed.get("added_at"),
        "regrowth_s": next((t - removed["added_at"] for _, world, t in recorded if world == 2 and t > removed.get("added_at", float("inf"))), None),
        "checkpoints": sorted(p.rsplit("/", 2)[-2] for p in _listing(f"s3://{bucket}/runs/nodeloss") if "/checkpoint_e" in p and p.endswith("/COMPLETE")),
        "scratch_files": sorted(str(p.relative_to(out)) for folder in alive for p in folder.rglob("*") if p.is_file()),
        "fixed": {"losses": losses(fixed_results), "steps": [json.loads(line) for line in steps2.read_text().splitlines()]},
    }))
    ray.shutdown()
    cluster.shutdown()


class _in_thread(threading.Thread):
    """A training run in a thread: Ray's `Cluster.add_node` works on the main thread only (Ray
    sets signal handlers there; from a thread it failed and the node never started)."""

    def __init__(self, run):
        super().__init__()
        self._run, self._outcome = run, None
        self.start()

    def run(self):
        try:
            self._outcome = (True, self._run())
        except BaseException as e:  # noqa: BLE001 - raised again by result()
            self._outcome = (False, e)

    def result(self):
        self.join()
        ok, value = self._outcome
        if not ok:
            raise value
        return value


def _add_node(cluster, scratch: Path, alive: list[Path]):
    scratch.mkdir()
    alive.append(scratch)
    return cluster.add_node(num_cpus=1, env_vars={"TMPDIR": str(scratch)})


def _worlds(steps: Path) -> set[int]:
    """The world sizes recorded so far (a line being written is skipped)."""
    worlds = set()
    for line in steps.read_text().splitlines() if steps.exists() else []:
        try:
            worlds.add(json.loads(line)[1])
        except ValueError:
            pass
    return worlds


def _listing(location: str) -> list[str]:
    import pyarrow.fs

    fs, root = pyarrow.fs.FileSystem.from_uri(location)
    return [info.path for info in fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True))]


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
