"""What crosses into Ray's processes: absolute paths, picklable objects, unique run names.

Ray's workers run in other working directories and unpickle what they are sent; a check
here names the offending object before anything starts.
"""

from __future__ import annotations

import os
from typing import Any

from trainyard import storage
from trainyard.engine.checkpoint import is_ray_checkpoint
from trainyard.engine.setup import run_id


def run_name(prefix: str) -> str:
    """`<prefix>-<YYYYmmdd-HHMMSS>-<6 hex>`: unique, and sortable by start time."""
    return f"{prefix}-{run_id()}"


def absolute(value: Any) -> Any:
    """A local path made absolute (a worker's working directory differs); anything else
    (URIs, Ray checkpoints, in-memory data) as it is."""
    if isinstance(value, (str, os.PathLike)) and not is_ray_checkpoint(value):
        return storage.absolute(value)
    return value


def check_picklable(name: str, value: Any) -> bytes:
    """Objects sent to Ray's processes must pickle; say which one does not, and why. The
    pickle, for `ray_env.check_importable` to read."""
    try:
        return dumps(value)
    except Exception as e:  # noqa: BLE001 - any pickling failure
        what = ", ".join(type(h).__name__ for h in value) if name == "hooks" else type(value).__name__
        raise TypeError(
            f"{name} ({what}) must be picklable to run inside Ray workers, and is not: "
            f"{type(e).__name__}: {e}. Define it at module level and keep no open files, "
            "locks or connections in it (open them in on_train_begin instead)"
        ) from e


def dumps(value: Any) -> bytes:
    """cloudpickle, as Ray ships functions and objects (closures and lambdas included)."""
    from ray import cloudpickle

    return cloudpickle.dumps(value)


def loads(data: bytes) -> Any:
    from ray import cloudpickle

    return cloudpickle.loads(data)
