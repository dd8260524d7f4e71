"""Train on the Ray cluster this runs on: the entrypoint for `ray job submit`.

    ray job submit --working-dir . -- python jobs/train.py --config jobs/configs/addition.yaml \\
        epochs=3 --workers 2 [--gpu]

Locally, `python jobs/train.py --config ...` starts a local Ray instance. On a cluster
where trainyard is not installed, the package is shipped to every worker from this
checkout (runtime_env py_modules).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

try:
    import trainyard  # noqa: F401 - installed (pip install -e . / cluster setup_commands)

    SHIP_SOURCE = False
except ImportError:  # a bare `--working-dir .`: use the checkout's source, and ship it
    sys.path.insert(0, str(ROOT / "platform"))
    SHIP_SOURCE = True


def main(argv: list[str] | None = None) -> int:
    from trainyard.cli.deps import require

    require("jobs/train.py")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="experiment YAML (jobs/configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. epochs=3 model.d_model=64")
    parser.add_argument("--workers", type=int, default=1, help="Ray Train workers (DDP); 0 trains in this process")
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker")
    parser.add_argument("--name", default=None, help="run name: rerunning with the same name resumes it")
    parser.add_argument("--storage", "--storage-path", dest="storage", default=None,
                        help="where runs persist: a local or shared path, s3://, gs:// (default: $TRAINYARD_STORAGE, else ~/trainyard-runs in a job)")
    parser.add_argument("--verbose", action="store_true", help="show Ray's own logs")
    args = parser.parse_args(argv)

    import os

    if args.verbose:
        os.environ["TRAINYARD_LOG_LEVEL"] = "DEBUG"
    from trainyard.cli.runners import run_experiment

    results = run_experiment(
        ROOT / args.config if not Path(args.config).is_absolute() else Path(args.config),
        args.overrides,
        workers=args.workers,
        gpu=args.gpu,
        name=args.name,
        storage_path=args.storage,
        ship_source=ROOT / "platform" / "trainyard" if SHIP_SOURCE else None,
    )
    print(f"final_loss {results['final_loss']:.4f}; checkpoint {results['checkpoint_path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
