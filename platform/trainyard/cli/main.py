"""`trainyard` command line: `trainyard train CONFIG [key=value ...]`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trainyard", description="Train and tune PyTorch models, locally or on Ray.")
    parser.add_argument("--verbose", action="store_true", help="show debug logs (and, on Ray, Ray's own logs)")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a model from an experiment config")
    train.add_argument("config", help="experiment YAML, e.g. jobs/configs/addition.yaml")
    train.add_argument("overrides", nargs="*", help="key=value, e.g. epochs=3 model.d_model=64")
    train.add_argument("--resume", default=None, help="checkpoint or run directory to resume from")
    train.add_argument("--workers", type=int, default=0, help="Ray Train workers (DDP, local Ray unless RAY_ADDRESS); 0: this process")
    train.add_argument("--gpu", action="store_true", help="with --workers: one GPU per worker")
    train.add_argument("--name", default=None, help="with --workers: run name (the same name resumes)")
    train.add_argument("--storage-path", default=None, help="with --workers: where checkpoints persist")
    train.add_argument("--results", default=None, help="write the results (JSON) here")
    train.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help="show debug logs and Ray's own logs")
    args = parser.parse_args(argv)
    if args.verbose:
        os.environ["TRAINYARD_LOG_LEVEL"] = "DEBUG"
    try:
        if args.command == "train":
            return _train(args)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"trainyard: error: {e}", file=sys.stderr)
        return 2
    return 1


def _train(args: argparse.Namespace) -> int:
    from trainyard._logging import get_logger
    from trainyard.execution.jobs import run_experiment

    if args.workers < 0:
        raise ValueError(f"--workers {args.workers}: give 0 (this process) or a number of Ray Train workers")
    log = get_logger("trainyard.cli")
    results = run_experiment(
        args.config,
        args.overrides,
        workers=args.workers,
        gpu=args.gpu,
        name=args.name,
        storage_path=args.storage_path,
        resume_from=args.resume,
    )
    summary = results["metrics_summary"]
    last = summary.iloc[-1].to_dict() if len(summary) else {}
    log.info("done in %.1fs: final_loss %.4f, best epoch %d; checkpoint %s", results["training_time"], results["final_loss"], results["best_epoch"], results["checkpoint_path"])
    if "val/exact_match" in last:
        log.info("validation exact-match accuracy: %.1f%%", 100 * last["val/exact_match"])
    if args.results:
        out = {k: v for k, v in results.items() if k != "metrics_summary"}
        out["metrics_summary"] = summary.to_dict(orient="records")
        Path(args.results).write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
