"""Sweep on the Ray cluster this runs on: the entrypoint for `ray job submit`.

    ray job submit --working-dir . -- python jobs/tune.py tune_spaces/addition_small.yaml \\
        --config jobs/configs/addition.yaml --samples 16 [--gpus-per-trial 0.5]
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

try:
    import trainyard  # noqa: F401

    SHIP_SOURCE = None
except ImportError:  # a bare `--working-dir .`: use the checkout's source, and ship it
    sys.path.insert(0, str(ROOT / "platform"))
    SHIP_SOURCE = ROOT / "platform" / "trainyard"


def main(argv: list[str] | None = None) -> int:
    from trainyard.cli.deps import require

    require("jobs/tune.py")
    from trainyard.cli import main as cli

    if SHIP_SOURCE is not None:  # trainyard must reach every trial's worker as well
        from trainyard.execution.ray_env import ensure_ray

        ensure_ray(py_modules=[str(SHIP_SOURCE)])
    return cli.main(["tune", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
