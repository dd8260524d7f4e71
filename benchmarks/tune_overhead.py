"""Sweep overhead: trainyard.hpo.sweep vs a plain Optuna loop in one process.

The same N short real trials (a GPT on built-in addition data, about 1-2 s of training
each), the same space, sampler seed and budget. Per-trial overhead of the sweep =
(sweep wall - trial compute / concurrency) / N, trial compute being the sum of the trials'
own training time. Target: under 0.25 s per trial (stock Ray Tune + Optuna: ~2.3 s).
Also: wall time until some trial reaches a target validation loss, ASHA vs no early stopping.

    python benchmarks/tune_overhead.py [--trials 16]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SPACE = {
    "metric": "val/loss",
    "mode": "min",
    "params": {"learning_rate": {"loguniform": [3e-4, 1e-2]}, "batch_size": {"choice": [16, 32]}, "model.d_model": {"choice": [32, 64]}},
}


def build_model(model_config):
    from trainyard.models import GPT

    return GPT(model_config)


def setup(args):
    from trainyard import TrainingConfig
    from trainyard.data import load_builtin
    from trainyard.data.addition import model_config

    train, val = load_builtin("addition", train_size=args.train_size, val_size=64, digits=2)
    config = model_config(2, d_model=32, n_layers=1, n_heads=2)
    return train, val, config, TrainingConfig(epochs=args.epochs, keep_last_n_checkpoints=1)


def plain_optuna(args, train, val, config, base, tmp: Path) -> dict:
    import optuna

    from trainyard import Trainer
    from trainyard.hpo import load_search_space

    space = load_search_space(SPACE)
    distributions = space.optuna_space()
    compute = []

    def objective(trial):
        params = {name: trial._suggest(name, dist) for name, dist in distributions.items()}
        training, model = space.split(params)
        tc = base.replace(**training, checkpoint_dir=str(tmp / f"plain-{trial.number}"))
        results = Trainer(lambda: build_model({**config, **model}), config, tc).train(train, val)
        compute.append(results["training_time"])
        return results["final_loss"]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=args.seed))
    start = time.perf_counter()
    study.optimize(objective, n_trials=args.trials)
    wall = time.perf_counter() - start
    return {"wall_s": wall, "compute_s": sum(compute), "concurrency": 1, "best": study.best_value}


def tune_sweep(args, train, val, config, base, tmp: Path, scheduler: str, concurrency: int) -> dict:
    from trainyard.hpo import sweep

    start = time.perf_counter()
    start_wall = time.time()
    result = sweep(build_model, config, train, val, space=SPACE, training_config=base, num_samples=args.trials,
                   max_concurrent=concurrency, scheduler=scheduler, storage_path=tmp, name=f"bench-{scheduler}", seed=args.seed)
    wall = time.perf_counter() - start
    compute = float(result.dataframe["time_total_s"].sum())
    return {"wall_s": wall, "compute_s": compute, "concurrency": concurrency, "best": float(result.best_metrics["val/loss"]),
            "reports": _reports(Path(result.path), start_wall)}


def _reports(sweep_dir: Path, start: float) -> list[tuple[float, float]]:
    """(seconds since the sweep started, val/loss) of every epoch report."""
    out = []
    for f in sweep_dir.glob("*/result.json"):
        for line in f.read_text().splitlines():
            row = json.loads(line)
            if "val/loss" in row:
                out.append((row["timestamp"] - start, row["val/loss"]))
    return sorted(out)


def time_to(reports, target):
    return next((t for t, v in reports if v <= target), None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-size", type=int, default=4000)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    logging.getLogger("trainyard").setLevel(logging.WARNING)
    from trainyard.execution.ray_env import ensure_ray

    ensure_ray(num_cpus=args.concurrency)
    train, val, config, base = setup(args)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        plain = plain_optuna(args, train, val, config, base, tmp)
        fifo = tune_sweep(args, train, val, config, base, tmp, "none", args.concurrency)
        asha = tune_sweep(args, train, val, config, base, tmp, "asha", args.concurrency)
    rows = {"plain optuna (1 process)": plain, "sweep, no early stopping": fifo, "sweep, ASHA": asha}
    for row in rows.values():
        row["per_trial_overhead_s"] = (row["wall_s"] - row["compute_s"] / row["concurrency"]) / args.trials
    target = fifo["best"] * 1.1
    out = {
        "trials": args.trials, "epochs": args.epochs, "target_val_loss": target,
        "rows": {k: {kk: vv for kk, vv in v.items() if kk != "reports"} for k, v in rows.items()},
        "time_to_target_s": {"no early stopping": time_to(fifo["reports"], target), "ASHA": time_to(asha["reports"], target)},
        "target": "sweep per-trial overhead < 0.25 s",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tune_overhead.json").write_text(json.dumps(out, indent=1))
    print(f"{args.trials} trials x {args.epochs} epochs, concurrency {args.concurrency} for sweeps")
    print(f"{'run':<28}{'wall s':>8}{'compute s':>11}{'overhead/trial s':>18}{'best val/loss':>15}")
    for name, r in rows.items():
        print(f"{name:<28}{r['wall_s']:>8.1f}{r['compute_s']:>11.1f}{r['per_trial_overhead_s']:>18.2f}{r['best']:>15.4f}")
    tt = out["time_to_target_s"]
    print(f"time to val/loss <= {target:.4f}: no early stopping {tt['no early stopping']}, ASHA {tt['ASHA']}")
    print(f"\nwritten to {RESULTS / 'tune_overhead.json'}")


if __name__ == "__main__":
    main()
