"""trainyard against the tools a user would pick instead, on the same work, side by side.

    hf     in-process: trainyard's Trainer vs the Hugging Face Trainer, a tiny GPT2LMHeadModel
           (2 layers, 128 wide, vocab 512, sequences of 64, batch 16, fused AdamW 3e-4,
           clipping 1.0, constant LR, the same batch order); each run in a fresh process
    lora   the same, fine-tuning LoRA adapters (peft, r=8, alpha 16, on c_attn and c_fc) with
           the same LoraConfig on both sides
    ray    on Ray Train, 1 and 2 workers: trainyard's Trainer(scaling=N) vs a stock TorchTrainer
           whose hand-written train_func does the same work (prepare_model, a distributed
           sampler, the same optimizer, a checkpoint reported every epoch)
    tune   8 trials (2 at a time, 3 epochs each): trainyard's sweep vs stock Tune +
           OptunaSearch, stock with its defaults and with reuse_actors=True, trainyard with
           and without a checkpoint reported every epoch

One thread per process; rounds interleaved with the order alternating; medians. Prints a
table and writes benchmarks/results/peers.json.

    python benchmarks/peers.py [--rounds 3] [--only hf lora ray tune]
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

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(ROOT / "platform"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from measure import hand_written_step, peak_rss_mb  # noqa: E402

HF = {"n_layer": 2, "n_embd": 128, "n_head": 4, "vocab_size": 512, "n_positions": 64, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
SEQ, BATCH, LR = 64, 16, 3e-4
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["c_attn", "c_fc"], "fan_in_fan_out": True}
LORA_LR = 1e-3


def _lora_config():
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", **LORA)


# -- hf: in-process, against the Hugging Face Trainer ---------------------------------------------


def _hf_setup(steps: int):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from trainyard.engine.data.order import epoch_batches

    torch.set_num_threads(1)
    data = torch.randint(0, HF["vocab_size"], (steps * BATCH, SEQ), generator=torch.Generator().manual_seed(0))
    order = [i for batch in epoch_batches(len(data), BATCH, 0, 0, 0, 1) for i in batch]  # trainyard's order
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**HF, bos_token_id=0, eos_token_id=0))
    return data, order, model


def child_hf_trainer(steps: int, lora: bool = False) -> dict:
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    data, order, model = _hf_setup(steps)
    if lora:
        from peft import get_peft_model

        model = get_peft_model(model, _lora_config())

    class Ordered(torch.utils.data.Dataset):  # trainyard's batch order, so the losses can be compared
        def __len__(self):
            return len(order)

        def __getitem__(self, i):
            return {"input_ids": data[order[i]], "labels": data[order[i]]}

    class Sequential(Trainer):
        def _get_train_sampler(self, *args, **kwargs):
            return torch.utils.data.SequentialSampler(self.train_dataset)

        def training_step(self, *args, **kwargs):
            loss = super().training_step(*args, **kwargs)
            losses.append(float(loss))
            return loss

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())

    losses, ends = [], []
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=BATCH, learning_rate=LORA_LR if lora else LR, num_train_epochs=1, weight_decay=0.0,
        max_grad_norm=1.0, lr_scheduler_type="constant", report_to=[], save_strategy="no", logging_strategy="no",
        disable_tqdm=True, use_cpu=True, seed=0, dataloader_num_workers=0,
    )
    start = time.perf_counter()
    Sequential(model=model, args=args, train_dataset=Ordered(), callbacks=[Clock()]).train()
    return {"ends": ends, "wall": time.perf_counter() - start, "losses": losses, "peak_rss_mb": peak_rss_mb()}


def child_trainyard(steps: int, lora: bool = False) -> dict:
    from trainyard import Trainer, TrainingConfig, TrainingHooks

    data, _order, model = _hf_setup(steps)

    class Clock(TrainingHooks):
        def on_batch_end(self, trainer, batch, outputs):
            ends.append(time.perf_counter())

    ends = []
    tc = TrainingConfig(learning_rate=LORA_LR if lora else LR, batch_size=BATCH, epochs=1, weight_decay=0.0, max_grad_norm=1.0, use_lr_schedule=False,
                        random_seed=0, checkpoint_dir=tempfile.mkdtemp(), keep_last_n_checkpoints=1)
    start = time.perf_counter()
    trainer = Trainer(model, {"pad_token_id": None}, tc, task_spec="language_modeling", hooks=Clock(), peft_config=_lora_config() if lora else None)
    results = trainer.train({"input_ids": data})
    return {"ends": ends, "wall": time.perf_counter() - start, "losses": results["loss_history"], "peak_rss_mb": peak_rss_mb()}


def compare_lora(args) -> dict:
    return compare_hf(args, lora=True)


def compare_hf(args, lora: bool = False) -> dict:
    times = {"trainyard": [], "hf": []}
    walls = {"trainyard": [], "hf": []}
    rss = {"trainyard": [], "hf": []}
    loss_diff = 0.0
    for r in range(args.rounds):
        losses = {}
        for which in (("trainyard", "hf") if r % 2 == 0 else ("hf", "trainyard")):
            out = _child(f"{which}{'-lora' if lora else ''}", args.steps)
            times[which] += [b - a for a, b in zip(out["ends"][args.warmup :], out["ends"][args.warmup + 1 :])]
            walls[which].append(out["wall"])
            rss[which].append(out["peak_rss_mb"])
            losses[which] = out["losses"]
        # HF divides each sequence's loss sum by its 64 labels; 63 of them are predicted.
        hf_corrected = [x * SEQ / (SEQ - 1) for x in losses["hf"]]
        loss_diff = max(loss_diff, max(abs(a - b) for a, b in zip(losses["trainyard"], hf_corrected)))
        first_diff = abs(losses["trainyard"][0] - hf_corrected[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "step_ms": {k: 1e3 * v for k, v in med.items()}, "step_ratio": med["trainyard"] / med["hf"],
        "epoch_wall_s": {k: statistics.median(v) for k, v in walls.items()},
        "wall_ratio": statistics.median(walls["trainyard"]) / statistics.median(walls["hf"]),
        "peak_rss_mb": {k: statistics.median(v) for k, v in rss.items()},
        "rss_ratio": statistics.median(rss["trainyard"]) / statistics.median(rss["hf"]),
        "max_abs_loss_diff": loss_diff, "first_step_loss_diff": first_diff,
    }


def _child(which: str, steps: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRAINYARD_LOG_LEVEL": "WARNING", "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.run([sys.executable, __file__, "--child", which, "--steps", str(steps)], capture_output=True, text=True, env=env, check=False)
    if proc.returncode:
        raise RuntimeError(f"{which} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- ray: on Ray Train, against a stock TorchTrainer ------------------------------------------------


def _gpt_config():
    return {"vocab_size": 256, "max_seq_len": SEQ, "d_model": 128, "n_layers": 2, "n_heads": 4, "dropout": 0.0}


def stock_train_func(config: dict) -> dict:
    """A hand-written Ray Train loop doing the trainyard engine's work."""
    import ray.train
    import ray.train.torch
    import torch

    from trainyard.models import GPT

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = ray.train.torch.prepare_model(GPT(_gpt_config()))
    loader = ray.train.torch.prepare_data_loader(
        torch.utils.data.DataLoader(torch.utils.data.TensorDataset(config["data"]), batch_size=config["batch"], shuffle=True)
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    ends = []
    for epoch in range(config["epochs"]):
        if ray.train.get_context().get_world_size() > 1:
            loader.sampler.set_epoch(epoch)
        for (x,) in loader:
            loss = hand_written_step(model, opt, x).item()
            ends.append(time.time())
        with tempfile.TemporaryDirectory() as d:  # the same work: a checkpoint every epoch
            checkpoint = None
            if ray.train.get_context().get_world_rank() == 0:
                torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, f"{d}/state.pt")
                checkpoint = ray.train.Checkpoint.from_directory(d)
            ray.train.report({"epoch": epoch, "loss": loss}, checkpoint=checkpoint)
    return {"ends": ends}


def _trainyard_ray(workers: int, data, epochs: int, storage: str) -> dict:
    import ray.train

    from trainyard import Trainer, TrainingConfig, TrainingHooks
    from trainyard.models import GPT

    class Clock(TrainingHooks):  # rank 0's step ends, kept in memory (as the stock loop does), written once
        def __init__(self, path):
            self.path, self.ends = path, []

        def on_batch_end(self, trainer, batch, outputs):
            self.ends.append(time.time())

        def on_train_end(self, trainer, results):
            if trainer.context.is_main:
                Path(self.path).write_text("\n".join(map(str, self.ends)))

    stamps = tempfile.mktemp(suffix=".txt")
    tc = TrainingConfig(learning_rate=1e-3, batch_size=BATCH // workers, epochs=epochs, weight_decay=0.0, use_lr_schedule=False, random_seed=0)
    start = time.time()
    Trainer(lambda: GPT(_gpt_config()), _gpt_config(), tc, task_spec="language_modeling", hooks=Clock(stamps),
            scaling=workers, run_config=ray.train.RunConfig(storage_path=storage)).train({"input_ids": data})
    end = time.time()
    return {"ends": [float(x) for x in Path(stamps).read_text().split()], "start": start, "end": end}


def _stock_ray(workers: int, data, epochs: int, storage: str) -> dict:
    import ray.train
    from ray.train.torch import TorchTrainer

    start = time.time()
    result = TorchTrainer(
        stock_train_func, train_loop_config={"data": data, "batch": BATCH // workers, "epochs": epochs},
        scaling_config=ray.train.ScalingConfig(num_workers=workers), run_config=ray.train.RunConfig(storage_path=storage),
    ).fit()
    end = time.time()
    return {"ends": result.return_value["ends"], "start": start, "end": end}


def compare_ray(args) -> dict:
    import torch

    from trainyard.execution.ray_env import ensure_ray

    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "benchmarks"), str(ROOT / "platform"), os.environ.get("PYTHONPATH")]))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ensure_ray(num_cpus=2)  # trainyard's Ray settings, for both
    data = torch.randint(0, 256, (args.steps * BATCH, SEQ), generator=torch.Generator().manual_seed(0))
    out = {}
    with tempfile.TemporaryDirectory() as storage:
        for workers in (1, 2):
            rows = {"trainyard": [], "stock": []}
            for r in range(args.rounds):
                for which in (("trainyard", "stock") if r % 2 == 0 else ("stock", "trainyard")):
                    run = (_trainyard_ray if which == "trainyard" else _stock_ray)(workers, data, 1, storage)
                    ends = run["ends"]
                    rows[which].append({
                        "step": statistics.median(b - a for a, b in zip(ends[args.warmup :], ends[args.warmup + 1 :])),
                        "startup": ends[0] - run["start"], "fit": run["end"] - run["start"],
                    })
            med = {k: {m: statistics.median(x[m] for x in v) for m in ("step", "startup", "fit")} for k, v in rows.items()}
            out[f"{workers}_worker"] = {
                "trainyard": med["trainyard"], "stock": med["stock"],
                "ratios": {m: med["trainyard"][m] / med["stock"][m] for m in ("step", "startup", "fit")},
            }
    return out


# -- tune: sweeps against stock Tune + OptunaSearch -------------------------------------------------


def _tune_data():
    import torch

    return torch.randint(0, 256, (64 * BATCH, SEQ), generator=torch.Generator().manual_seed(1))


def stock_trainable(config: dict, data=None) -> None:
    import ray.tune
    import torch

    from trainyard.models import GPT

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = GPT(_gpt_config())
    opt = torch.optim.AdamW(model.parameters(), lr=config["learning_rate"], fused=True)
    g = torch.Generator().manual_seed(0)
    for epoch in range(3):
        order = torch.randperm(len(data), generator=g)
        total = 0.0
        for i in range(0, len(order), BATCH):
            total += hand_written_step(model, opt, data[order[i : i + BATCH]]).item()
        ray.tune.report({"train/loss": total / (len(order) / BATCH)})


def _stock_sweep(reuse: bool, storage: str) -> float:
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    search = OptunaSearch(metric="train/loss", mode="min", sampler=optuna.samplers.TPESampler(seed=0))
    start = time.perf_counter()
    tune.Tuner(
        tune.with_parameters(stock_trainable, data=_tune_data()),
        param_space={"learning_rate": tune.loguniform(1e-4, 1e-2)},
        tune_config=tune.TuneConfig(search_alg=search, num_samples=8, max_concurrent_trials=2, reuse_actors=reuse),
        run_config=tune.RunConfig(storage_path=storage, verbose=0),
    ).fit()
    return time.perf_counter() - start


def _trainyard_sweep(checkpoint_every_epoch: bool, storage: str) -> float:
    from trainyard import TrainingConfig
    from trainyard.hpo import sweep
    from trainyard.models import GPT

    start = time.perf_counter()
    sweep(
        lambda: GPT(_gpt_config()), _gpt_config(), {"input_ids": _tune_data()}, space={"metric": "train/loss", "mode": "min",
        "params": {"learning_rate": {"loguniform": [1e-4, 1e-2]}}}, training_config=TrainingConfig(batch_size=BATCH, epochs=3,
        weight_decay=0.0, use_lr_schedule=False), task_spec="language_modeling", num_samples=8, max_concurrent=2, scheduler="none",
        storage_path=storage, checkpoint_every_epoch=checkpoint_every_epoch,
    )
    return time.perf_counter() - start


def compare_tune(args) -> dict:
    from trainyard.execution.ray_env import ensure_ray

    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "benchmarks"), str(ROOT / "platform"), os.environ.get("PYTHONPATH")]))
    ensure_ray(num_cpus=2)
    logging.getLogger("trainyard").setLevel(logging.WARNING)
    variants = {
        "trainyard": lambda s: _trainyard_sweep(True, s),
        "trainyard, no per-epoch checkpoints": lambda s: _trainyard_sweep(False, s),
        "stock Tune, defaults": lambda s: _stock_sweep(False, s),
        "stock Tune, reuse_actors=True": lambda s: _stock_sweep(True, s),
    }
    walls = {k: [] for k in variants}
    with tempfile.TemporaryDirectory() as storage:
        for r in range(args.tune_rounds):
            names = list(variants)
            for name in names[r % len(names) :] + names[: r % len(names)]:
                walls[name].append(variants[name](storage))
    med = {k: statistics.median(v) for k, v in walls.items()}
    return {"wall_s": med, "ratios": {f"{k} / {p}": med[k] / med[p] for k in med if k.startswith("trainyard") for p in med if p.startswith("stock")}}


# -- the table ------------------------------------------------------------------------------------


def len_steps(results: dict) -> int:
    return results.get("steps", 60)


def table(results: dict) -> str:
    lines = ["| comparison | measure | trainyard | peer | ratio |", "| --- | --- | --- | --- | --- |"]
    for key, label in (("hf", "in-process vs HF Trainer"), ("lora", "LoRA fine-tuning vs HF Trainer + peft")):
        if key not in results:
            continue
        h = results[key]
        lines += [
            f"| {label} | step time | {h['step_ms']['trainyard']:.1f} ms | {h['step_ms']['hf']:.1f} ms | {h['step_ratio']:.2f} |",
            f"| | epoch wall (trainyard also writes an epoch checkpoint) | {h['epoch_wall_s']['trainyard']:.2f} s | {h['epoch_wall_s']['hf']:.2f} s | {h['wall_ratio']:.2f} |",
            f"| | peak RSS | {h['peak_rss_mb']['trainyard']:.0f} MB | {h['peak_rss_mb']['hf']:.0f} MB | {h['rss_ratio']:.2f} |",
            f"| | per-step losses (HF's normaliser corrected) | | | first step {h['first_step_loss_diff']:.1e}, max over {len_steps(results)} steps {h['max_abs_loss_diff']:.1e} |",
        ]
    for key, label in (("1_worker", "Ray Train, 1 worker"), ("2_worker", "Ray Train, 2 workers")):
        if key in results.get("ray", {}):
            r = results["ray"][key]
            for m, name, unit, scale in (("step", "step time", "ms", 1e3), ("startup", "start-up to first step", "s", 1), ("fit", "whole fit()", "s", 1)):
                first = f"| {label} vs stock TorchTrainer" if m == "step" else "|"
                lines.append(f"{first} | {name} | {r['trainyard'][m] * scale:.2f} {unit} | {r['stock'][m] * scale:.2f} {unit} | {r['ratios'][m]:.2f} |")
    if "tune" in results:
        t = results["tune"]
        walls = t["wall_s"]
        for ours in (k for k in walls if k.startswith("trainyard")):
            for peer in (k for k in walls if k.startswith("stock")):
                first = "| 8-trial sweep (2 at a time, 3 epochs) vs stock Tune + OptunaSearch" if not lines[-1].startswith("| 8-trial") and not lines[-1].startswith("| |  ") else "|"
                lines.append(f"{first} | {ours} vs {peer[len('stock Tune, '):]} | {walls[ours]:.1f} s | {walls[peer]:.1f} s | {walls[ours] / walls[peer]:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tune-rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--only", nargs="*", choices=["hf", "lora", "ray", "tune"], default=["hf", "lora", "ray", "tune"])
    p.add_argument("--child", choices=["hf", "trainyard", "hf-lora", "trainyard-lora"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child = child_hf_trainer if args.child.startswith("hf") else child_trainyard
        print(json.dumps(child(args.steps, lora=args.child.endswith("-lora"))))
        return 0
    results = {}
    for name in args.only:
        start = time.perf_counter()
        results[name] = {"hf": compare_hf, "lora": compare_lora, "ray": compare_ray, "tune": compare_tune}[name](args)
        print(f"{name} done in {time.perf_counter() - start:.0f}s", flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "peers.json").write_text(json.dumps(results, indent=1))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
