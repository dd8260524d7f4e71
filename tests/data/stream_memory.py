"""Reads one epoch of a Parquet folder the way a rank does (its batches, in the engine's
order) and prints, as JSON, this process's resident memory before reading and its peak
after (kB). Run in a process of its own by tests/data/test_streaming.py."""

import json
import sys

from trainyard.engine.data.inputs import as_dataset
from trainyard.engine.data.order import iter_epoch_batches


def status_kb(field: str) -> int:
    """From /proc/self/status: VmRSS (resident now), VmHWM (the peak of this program; unlike
    getrusage's ru_maxrss, not the forked parent's before exec)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(f"{field}:"))


source = as_dataset(sys.argv[1])
source.chunk_rows = int(sys.argv[2])  # the shuffle chunk: what a rank holds at most twice
source.__getitems__([0])  # libraries warmed up
before = status_kb("VmRSS")
rows = 0
for batch in iter_epoch_batches(len(source), 256, epoch=0, seed=0, rank=0, world_size=2, chunk_rows=source.chunk_rows):
    rows += len(source.__getitems__(batch)["input_ids"])
print(json.dumps({"before": before, "peak": status_kb("VmHWM"), "rows": rows}))
