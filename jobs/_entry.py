"""What the `ray job submit` entrypoints share (jobs/tune.py, jobs/pipeline.py): trainyard
from this checkout when this Python lacks it (a bare `--working-dir .`, shipped to every
worker too), and one clear message when this Python cannot run trainyard at all."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_command(command: str, entrypoint: str, argv: list[str]) -> int:
    """`trainyard <command> <argv...>` on the Ray cluster this job runs on."""
    try:
        import trainyard  # noqa: F401 - installed (pip install -e . / cluster setup_commands)

        ship = None
    except ImportError:
        sys.path.insert(0, str(ROOT / "platform"))
        ship = ROOT / "platform" / "trainyard"
    from trainyard.cli.deps import require

    require(entrypoint)
    from trainyard.cli import main as cli

    if ship is not None:  # trainyard must reach every trial's and worker's process as well
        from trainyard.execution.ray_env import ensure_ray

        ensure_ray(py_modules=[str(ship)])
    return cli.main([command, *argv])
