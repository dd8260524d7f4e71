"""One-shot GPU check: the engine on GPT-2 small against a hand-written loop, and the GPU
paths nothing else exercises. Needs PyTorch with CUDA, not Ray.

    python benchmarks/gpu.py OUT_DIR            # on a CUDA machine: < 6 minutes on one H100
    python benchmarks/gpu.py OUT_DIR --smoke    # CPU-sized, every section (CI runs it)

Sections, each in its own process (a fresh CUDA context; one failing does not stop the rest):

    env         device, PyTorch, CUDA, peak FLOP/s (trainyard's table)
    throughput  GPT-2 small (124M, seq 1024), bf16 autocast, fused AdamW, clipping; the engine
                and a hand-written nanoGPT-style loop, torch.compile off and on: median step
                time after warm-up, their ratio (target <= 1.02), tokens/s and MFU
                (6N + attention FLOPs per token / step time / peak; target >= 45% on an H100)
    fp16        use_amp with float16: a GradScaler, losses finite, the scale adapts
    resume      deterministic=True: a run stopped mid-epoch and resumed gives bit-identical
                losses and weights to the uninterrupted run
    fsdp        trainyard's FSDP path on one device (NCCL, a local process group of 1): the
                engine loop sharded per block with bf16 mixed precision matches the unsharded
                loop, and a mid-epoch sharded (DCP) checkpoint resumes to the same losses
    profile     torch.profiler over a few steps of each loop, eager and compiled: GPU kernel
                time, the share of the step the GPU is busy, the kernels that differ most

Writes OUT_DIR/gpu.json and OUT_DIR/gpu.md (the table).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))  # the GPU machine has the checkout, not the package

SECTIONS = ("env", "fp16", "resume", "fsdp", "throughput", "profile")  # the long ones last


# -- the shared pieces -------------------------------------------------------------------


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _model_config(smoke: bool) -> dict:
    if smoke:
        return {"vocab_size": 128, "max_seq_len": 32, "d_model": 64, "n_layers": 2, "n_heads": 4, "dropout": 0.0}
    return {"preset": "gpt2-small"}


def _tokens(n: int, seq: int, vocab: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, seq), generator=g)


def _modes(args) -> list[str | None]:
    """torch.compile modes to measure (None: eager), as --modes lists them; eager only with
    --no-compile or --smoke."""
    modes = [None if m == "off" else m for m in args.modes]
    return [m for m in modes if m is None] if args.smoke or args.no_compile else modes


def _default_batch() -> int:
    """Sequences of 1024 per step, sized to the GPU: the largest power of two whose eager
    GPT-2 small step (about 1.15 GB a sequence, measured) fits in 60% of its memory."""
    import torch

    memory = torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else 0
    batch = 8
    while 2 * batch * 1.15e9 <= 0.6 * memory:
        batch *= 2
    return batch


def _free():
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# -- throughput: the engine against a hand-written loop ----------------------------------------


def _raw_loop(config: dict, data, batch: int, compile_mode: str | None, on_step=None) -> tuple[list[float], list[float]]:
    """What a careful user writes (nanoGPT's train.py): fused AdamW, bf16 autocast,
    clipping, loss read every step. Inputs and targets are the sequence shifted by one."""
    import torch
    import torch.nn.functional as F

    from trainyard.models import GPT

    device = _device()
    torch.manual_seed(0)
    model = GPT(config).to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}], lr=6e-4, fused=device.type == "cuda"
    )

    def loss_of(x, y):  # nanoGPT computes the loss inside the compiled forward
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = model(x)
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))

    step_loss = torch.compile(loss_of, mode=compile_mode) if compile_mode else loss_of  # the engine's mode
    data = data.pin_memory() if device.type == "cuda" else data
    ends, losses = [], []
    for i in range(0, len(data), batch):
        chunk = data[i : i + batch].to(device, non_blocking=True)
        loss = step_loss(chunk[:, :-1], chunk[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        ends.append(time.perf_counter())
        if on_step is not None:
            on_step(len(ends))
    del model, opt, step_loss
    return losses, ends


def _engine_loop(config: dict, data, batch: int, compile_mode: str | None, tmp: str, on_step=None) -> tuple[list[float], list[float], dict]:
    from trainyard import Trainer, TrainingConfig, TrainingHooks
    from trainyard.models import GPT

    class StepClock(TrainingHooks):
        def __init__(self):
            self.ends, self.step = [], 0

        def on_batch_end(self, trainer, batch, outputs):
            if trainer.state.global_step != self.step:  # after the step's one read of the device
                self.step = trainer.state.global_step
                self.ends.append(time.perf_counter())
                if on_step is not None:
                    on_step(self.step)

    clock = StepClock()
    tc = TrainingConfig(
        learning_rate=6e-4, batch_size=batch, epochs=1, weight_decay=0.01, max_grad_norm=1.0, use_amp=True, amp_dtype="bfloat16",
        use_lr_schedule=False, compile_mode=compile_mode, checkpoint_dir=tmp, keep_last_n_checkpoints=1,
    )
    # seq positions per sequence, as in the raw loop (which predicts one more target per row).
    results = Trainer(lambda: GPT(config), config, tc, task_spec="language_modeling", hooks=clock).train({"input_ids": data})
    row = results["metrics_summary"].iloc[0].to_dict()
    return results["loss_history"], clock.ends, row


def section_throughput(args) -> dict:
    import torch

    from trainyard.engine.telemetry import peak_flops
    from trainyard.models import GPT

    config = _model_config(args.smoke)
    probe = GPT(config)
    vocab, seq = probe.config.vocab_size if args.smoke else 50257, probe.config.max_seq_len  # GPT-2's real vocabulary
    flops_per_token = probe.flops_per_token(seq)
    n_params = sum(p.numel() for p in probe.parameters())
    name = f"GPT d{probe.config.d_model} L{probe.config.n_layers} ({n_params / 1e6:.1f}M)"
    del probe
    batch, warmup, steps = args.batch, args.warmup, args.steps
    data = _tokens((warmup + steps) * batch, seq + 1, vocab)
    device = _device()
    peak = peak_flops(device, "bf16")
    modes = _modes(args)
    out = {"model": name, "batch": batch,
           "seq": seq, "tokens_per_step": batch * seq, "flops_per_token": flops_per_token, "peak_flops": peak, "runs": []}
    for compile_mode in modes:
        loops = ("raw", "engine")
        times = {which: [] for which in loops}
        rounds = 1 if compile_mode else args.rounds
        for r in range(rounds):
            order = loops if r % 2 == 0 else loops[::-1]
            for which in order:
                start = time.perf_counter()
                if which == "raw":
                    losses, ends = _raw_loop(config, data, batch, compile_mode)
                else:
                    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always", RuntimeWarning)
                        losses, ends, row = _engine_loop(config, data[:, :-1], batch, compile_mode, tmp)
                    out.setdefault("engine_warnings", []).extend(str(w.message)[:300] for w in caught if "compile" in str(w.message))
                    out.setdefault("engine_row", {})[str(compile_mode)] = {k: row[k] for k in row if "/" in k or k == "mfu"}
                _sync()
                times[which] += [b - a for a, b in zip(ends[warmup:], ends[warmup + 1 :])]
                finite = all(math.isfinite(x) for x in losses)
                print(f"[throughput] compile={compile_mode} {which}: {time.perf_counter() - start:.1f}s, losses finite {finite}", flush=True)
                _free()
        raw_s, engine_s = statistics.median(times["raw"]), statistics.median(times["engine"])
        run = {"compile": compile_mode or "off", "raw_step_ms": 1e3 * raw_s, "engine_step_ms": 1e3 * engine_s, "ratio": engine_s / raw_s,
               "steps_timed": len(times["engine"])}
        for which, seconds in (("raw", raw_s), ("engine", engine_s)):
            tokens_per_s = batch * seq / seconds
            run[f"{which}_tokens_per_s"] = tokens_per_s
            run[f"{which}_mfu"] = tokens_per_s * flops_per_token / peak if peak else None
        out["runs"].append(run)
    if device.type == "cuda":
        out["max_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return out


# -- profile: where the engine's extra time goes ------------------------------------------------


def section_profile(args) -> dict:
    """torch.profiler over a few steps of each loop, eager and compiled, after warm-up: GPU
    kernel time per step, the share of the step the GPU was busy, the kernels that differ
    most between the two loops."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from trainyard.models import GPT

    config = _model_config(args.smoke)
    seq = GPT(config).config.max_seq_len
    steps, warmup, batch = 5, 3, args.batch
    data = _tokens((warmup + steps + 1) * batch, seq + 1, 50257 if not args.smoke else 128)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])

    class Window:
        """Profiles from the end of step `warmup` to the end of step `warmup + steps`."""

        def __init__(self):
            self.prof, self.start, self.end = profile(activities=activities), None, None

        def at(self, step: int) -> None:
            if step == warmup:
                _sync()
                self.prof.start()
                self.start = time.perf_counter()
            elif step == warmup + steps:
                _sync()
                self.end = time.perf_counter()
                self.prof.stop()

        def summary(self) -> tuple[dict, float, dict]:
            averages = self.prof.key_averages()
            events = [e for e in averages if e.device_type.name == "CUDA"] if torch.cuda.is_available() else []
            host = sorted(((e.key[:60], e.self_cpu_time_total / 1e3 / steps) for e in averages if e.device_type.name == "CPU"), key=lambda kv: -kv[1])
            return {e.key[:60]: e.self_device_time_total / 1e3 / steps for e in events}, 1e3 * (self.end - self.start) / steps, dict(host[:15])

    out = {}
    for compile_mode in _modes(args):
        kernels, walls, host = {}, {}, {}
        window = Window()
        _raw_loop(config, data, batch, compile_mode, on_step=window.at)
        kernels["raw"], walls["raw"], host["raw"] = window.summary()
        _free()
        window = Window()
        with tempfile.TemporaryDirectory() as tmp:
            _engine_loop(config, data[:, :-1], batch, compile_mode, tmp, on_step=window.at)
        kernels["engine"], walls["engine"], host["engine"] = window.summary()
        _free()
        extra = {k: kernels["engine"].get(k, 0) - kernels["raw"].get(k, 0) for k in {*kernels["engine"], *kernels["raw"]}}
        top = sorted(extra.items(), key=lambda kv: -abs(kv[1]))[:12]
        kernel_ms = {k: sum(v.values()) for k, v in kernels.items()}
        out[compile_mode or "off"] = {
            "step_ms": walls, "kernel_ms_per_step": kernel_ms, "gpu_busy_frac": {k: kernel_ms[k] / walls[k] for k in walls},
            "largest_differences_ms_per_step": dict(top), "host_ops_self_ms_per_step": host,
        }
    return out


# -- fp16 with a GradScaler ---------------------------------------------------------------------


def section_fp16(args) -> dict:
    import torch

    from trainyard import Trainer, TrainingConfig
    from trainyard.models import GPT

    config = {**_model_config(True), "max_seq_len": 128, "d_model": 256, "n_layers": 4} if not args.smoke else _model_config(True)
    data = _tokens((16 if args.smoke else 64) * 8, GPT(config).config.max_seq_len, GPT(config).config.vocab_size, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        tc = TrainingConfig(learning_rate=1e-3, batch_size=8, epochs=2, use_amp=True, amp_dtype="float16", checkpoint_dir=tmp)
        results = Trainer(lambda: GPT(config), config, tc).train({"input_ids": data})
        scaler = torch.load(Path(results["checkpoint_path"]) / "state.pt", weights_only=True)["scaler"]  # None without one
    losses = results["loss_history"]
    return {
        "amp_enabled": results["amp_enabled"], "steps": len(losses), "losses_finite": all(math.isfinite(x) for x in losses),
        "first_loss": losses[0], "last_loss": losses[-1], "loss_fell": losses[-1] < losses[0],
        "grad_scaler": scaler is not None, "final_scale": scaler["scale"] if scaler else None,
    }


# -- deterministic, bit-exact resume ----------------------------------------------------------


def section_resume(args) -> dict:
    import torch

    from trainyard import Trainer, TrainingConfig, TrainingHooks
    from trainyard.models import GPT

    config = {**_model_config(True), "max_seq_len": 128, "d_model": 256, "n_layers": 4, "dropout": 0.1} if not args.smoke else {**_model_config(True), "dropout": 0.1}
    seq, vocab = GPT(config).config.max_seq_len, GPT(config).config.vocab_size
    data = {"input_ids": _tokens(96, seq, vocab, seed=2)}

    class StopAt(TrainingHooks):
        def on_batch_end(self, trainer, batch, outputs):
            if trainer.state.epoch == 2 and trainer.state.batch_in_epoch == 5:
                trainer.request_stop("checking resume")

    def settings(path):
        return TrainingConfig(learning_rate=1e-3, batch_size=8, epochs=3, gradient_accumulation_steps=2, deterministic=True,
                              use_amp=True, amp_dtype="bfloat16", checkpoint_dir=path)

    with tempfile.TemporaryDirectory() as tmp:
        full_trainer = Trainer(lambda: GPT(config), config, settings(f"{tmp}/full"))
        full = full_trainer.train(data)
        first = Trainer(lambda: GPT(config), config, settings(f"{tmp}/cut"), hooks=StopAt()).train(data)
        second_trainer = Trainer(lambda: GPT(config), config, settings(f"{tmp}/cut"))
        second = second_trainer.train(data, resume_from=f"{tmp}/cut")
    full_weights = full_trainer.model.state_dict()
    same_weights = all(torch.equal(full_weights[k], v) for k, v in second_trainer.model.state_dict().items())
    return {
        "stopped_at": first["checkpoint_path"].rsplit("/", 1)[-1], "steps": len(full["loss_history"]),
        "losses_bit_identical": full["loss_history"] == second["loss_history"], "weights_bit_identical": same_weights,
    }


# -- FSDP2, world size 1 ----------------------------------------------------------------------


def section_fsdp(args) -> dict:
    """trainyard's own FSDP path on one device: the engine loop with a world-size-1 sharding
    context (what a Ray Train worker uses, without Ray): fully_shard per block, bf16 mixed
    precision, accumulation and clipping, a sharded (DCP) checkpoint mid-epoch and a resume
    from it."""
    import torch
    import torch.distributed as dist

    from trainyard import Trainer, TrainingConfig, TrainingHooks
    from trainyard.engine.context import LocalContext
    from trainyard.execution.parallel import ProcessGroupContext
    from trainyard.models import GPT

    class StopAt(TrainingHooks):
        def on_batch_end(self, trainer, batch, outputs):
            if trainer.state.epoch == 2 and trainer.state.batch_in_epoch == 3:  # mid window
                trainer.request_stop("checking a sharded resume")

    device = _device()
    backend = "nccl" if device.type == "cuda" else "gloo"
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    dist.init_process_group(backend, rank=0, world_size=1, device_id=torch.device("cuda", 0) if device.type == "cuda" else None)
    try:
        config = {**_model_config(True), "max_seq_len": 128, "d_model": 256, "n_layers": 4} if not args.smoke else _model_config(True)
        seq, vocab = GPT(config).config.max_seq_len, GPT(config).config.vocab_size
        data = {"input_ids": _tokens(48, seq, vocab, seed=3)}

        def settings(parallelism, path):
            return TrainingConfig(learning_rate=1e-3, batch_size=4, gradient_accumulation_steps=2, max_grad_norm=0.5, epochs=3,
                                  use_amp=True, amp_dtype="bfloat16", parallelism=parallelism, checkpoint_dir=path, random_seed=5)

        def train(parallelism, path, hooks=(), resume_from=None):
            cfg = settings(parallelism, path)
            trainer = Trainer(lambda: GPT(config), config, cfg, hooks=list(hooks))
            ctx = ProcessGroupContext(cfg) if parallelism == "fsdp" else LocalContext()
            return trainer.run(ctx, data, resume_from=resume_from)

        with tempfile.TemporaryDirectory() as tmp:
            plain = train("ddp", f"{tmp}/plain")
            full = train("fsdp", f"{tmp}/full")
            cut = train("fsdp", f"{tmp}/cut", hooks=[StopAt()])
            files = sorted(p.name for p in Path(cut["checkpoint_path"]).iterdir())
            resumed = train("fsdp", f"{tmp}/cut", resume_from=f"{tmp}/cut")
        diff = max(abs(a - b) for a, b in zip(plain["loss_history"], full["loss_history"]))
        resume_diff = max(abs(a - b) for a, b in zip(full["loss_history"], resumed["loss_history"]))
        return {
            "backend": backend, "steps": len(full["loss_history"]), "max_abs_diff": diff, "close": diff < 2e-2,
            "checkpoint_files": files, "resume_max_abs_diff": resume_diff, "resume_close": resume_diff < 1e-3,
            "plain_peak_gb": plain["telemetry"].get("memory/peak_gb"), "fsdp_peak_gb": full["telemetry"].get("memory/peak_gb"),
        }
    finally:
        dist.destroy_process_group()


def section_env(args) -> dict:
    import torch

    from trainyard.engine.telemetry import peak_flops

    device = _device()
    out = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "cuda": torch.version.cuda}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update(sm=f"{props.major}.{props.minor}", memory_gb=props.total_memory / 1e9, peak_bf16=peak_flops(device, "bf16"))
    return out


# -- the driver -------------------------------------------------------------------------------


def _run_section(name: str, args) -> dict:
    cmd = [sys.executable, __file__, str(args.out), "--section", name, *_flags(args)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.section_timeout, env={**os.environ, "TRAINYARD_LOG_LEVEL": "WARNING"})
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.section_timeout} s", "seconds": args.section_timeout}
    seconds = time.perf_counter() - start
    sys.stderr.write(proc.stderr[-3000:] if proc.returncode else "")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return {**json.loads(line[len("RESULT ") :]), "seconds": seconds}
    return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:500], "seconds": seconds}


def _flags(args) -> list[str]:
    flags = ["--steps", str(args.steps), "--warmup", str(args.warmup), "--rounds", str(args.rounds)] + (["--batch", str(args.batch)] if args.batch else [])
    return flags + ["--modes", *args.modes] + (["--smoke"] if args.smoke else []) + (["--no-compile"] if args.no_compile else [])


def _fmt(value, digits=3) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def table(results: dict) -> str:
    env = results.get("env", {})
    lines = [f"Device: {env.get('device')} (torch {env.get('torch')}, CUDA {env.get('cuda')})", ""]
    tp = results.get("throughput", {})
    if "runs" in tp:
        lines += [f"{tp['model']}, batch {tp['batch']} x seq {tp['seq']}, bf16 autocast, fused AdamW, clip 1.0", "",
                  "| torch.compile | raw step | engine step | engine / raw | raw tokens/s | engine tokens/s | raw MFU | engine MFU |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for run in tp["runs"]:
            mfu = lambda v: f"{100 * v:.1f}%" if v else "n/a"  # noqa: E731
            lines.append(f"| {run['compile']} | {run['raw_step_ms']:.1f} ms | {run['engine_step_ms']:.1f} ms | {run['ratio']:.3f} | "
                         f"{run['raw_tokens_per_s']:,.0f} | {run['engine_tokens_per_s']:,.0f} | {mfu(run['raw_mfu'])} | {mfu(run['engine_mfu'])} |")
    else:
        lines.append(f"throughput: {tp.get('error')}")
    prof = results.get("profile", {})
    if prof and "error" not in prof:
        lines += ["", "| profile: torch.compile | raw step | engine step | raw kernels | engine kernels | raw GPU busy | engine GPU busy |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for mode, r in prof.items():
            if isinstance(r, dict) and "step_ms" in r:
                busy = lambda v: f"{100 * v:.0f}%"  # noqa: E731
                lines.append(f"| {mode} | {r['step_ms']['raw']:.1f} ms | {r['step_ms']['engine']:.1f} ms | {r['kernel_ms_per_step']['raw']:.1f} ms | "
                             f"{r['kernel_ms_per_step']['engine']:.1f} ms | {busy(r['gpu_busy_frac']['raw'])} | {busy(r['gpu_busy_frac']['engine'])} |")
    lines.append("")
    lines.append("| check | result | seconds |")
    lines.append("| --- | --- | --- |")
    for name, keys in (("fp16", ("losses_finite", "loss_fell", "grad_scaler")), ("resume", ("losses_bit_identical", "weights_bit_identical")),
                       ("fsdp", ("backend", "close", "max_abs_diff", "resume_close", "resume_max_abs_diff"))):
        if name not in results:
            continue
        r = results[name]
        shown = r.get("error") or ", ".join(f"{k} {_fmt(r.get(k))}" for k in keys)
        lines.append(f"| {name} | {shown} | {_fmt(r.get('seconds', float('nan')), 3)} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="directory for gpu.json and gpu.md")
    p.add_argument("--smoke", action="store_true", help="CPU-sized: tiny models, a few steps (CI)")
    p.add_argument("--batch", type=int, default=None, help="sequences per step (default: sized to the GPU's memory; 4 in --smoke)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per loop (default 40; 4 in --smoke)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 8; 2 in --smoke)")
    p.add_argument("--rounds", type=int, default=2, help="eager rounds, alternating which loop goes first")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile runs")
    p.add_argument("--modes", nargs="+", default=["off", "default"], help="torch.compile modes to measure (off = eager)",
                   choices=["off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"])
    p.add_argument("--only", nargs="*", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--section-timeout", type=int, default=300)
    p.add_argument("--section", choices=SECTIONS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.section:  # sized in the section's process: the driver never touches the GPU
        args.batch = args.batch or (4 if args.smoke else _default_batch())
    args.steps = args.steps or (4 if args.smoke else 40)
    args.warmup = args.warmup or (2 if args.smoke else 8)
    if args.section:
        print("RESULT " + json.dumps(globals()[f"section_{args.section}"](args), default=str), flush=True)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in args.only:
        results[name] = _run_section(name, args)
        print(f"{name}: {json.dumps(results[name], default=str)[:400]}", flush=True)
        (args.out / "gpu.json").write_text(json.dumps(results, indent=1, default=str))  # what finished survives a kill
    text = table(results)
    (args.out / "gpu.md").write_text(text)
    print("\n" + text)
    return 0 if not any("error" in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
