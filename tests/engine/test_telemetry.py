"""Throughput telemetry, MFU, and a hot loop that reads the device once per optimizer step."""

import statistics
import time
from types import SimpleNamespace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from trainyard import Trainer, TrainingConfig, TrainingHooks
from trainyard.engine import telemetry
from trainyard.models import GPT

from tests.helpers import VOCAB, TinyLM, lm_factory, lm_samples

CONFIG = SimpleNamespace(vocab_size=VOCAB)
KEYS = ["throughput/tokens_per_s", "throughput/samples_per_s", "time/step_ms", "time/data_wait_frac", "time/train_s"]


class Sleepy(TrainingHooks):
    """Makes every micro-batch take a while, and keeps its own clock of the epoch: its
    start and the end of every optimizer step."""

    def __init__(self, seconds):
        self.seconds = seconds
        self.start, self.ends, self.step = None, [], 0

    def on_epoch_begin(self, trainer, epoch):
        self.start = time.perf_counter()

    def on_batch_begin(self, trainer, batch):
        time.sleep(self.seconds)

    def on_batch_end(self, trainer, batch, outputs):
        if trainer.state.global_step != self.step:
            self.step = trainer.state.global_step
            self.ends.append(time.perf_counter())


def test_telemetry_columns_agree_with_an_independent_clock(tmp_path):
    # 16 samples of 8 tokens (7 targets each) in batches of 4: 4 steps of >= 50 ms each.
    clock = Sleepy(0.05)
    tc = TrainingConfig(epochs=1, batch_size=4, checkpoint_dir=str(tmp_path / "r"))
    r = Trainer(lm_factory(), CONFIG, tc, hooks=clock).train(lm_samples(16))
    row = r["metrics_summary"].iloc[0]
    assert set(KEYS) <= set(row.index) and "mfu" not in row.index and "memory/peak_gb" not in row.index
    steps = [b - a for a, b in zip([clock.start, *clock.ends], clock.ends)]
    train_s = clock.ends[-1] - clock.start
    assert row["time/step_ms"] >= 50 and row["time/step_ms"] == pytest.approx(1000 * statistics.median(steps), rel=0.05)
    assert row["time/train_s"] == pytest.approx(train_s, rel=0.05)
    assert row["throughput/tokens_per_s"] == pytest.approx(16 * 7 / train_s, rel=0.05)
    assert row["throughput/tokens_per_s"] * row["time/train_s"] == pytest.approx(16 * 7)
    assert row["throughput/samples_per_s"] * row["time/train_s"] == pytest.approx(16)
    assert r["telemetry"]["throughput/tokens_per_s"] == pytest.approx(row["throughput/tokens_per_s"])


def test_the_step_in_which_torch_compile_compiles_is_left_out_of_the_rates(tmp_path, monkeypatch):
    """Compiling takes seconds to minutes in the first step; counted, a compiled run's first
    epoch would report a fraction of the throughput and MFU it trains at."""
    from trainyard.engine import setup

    monkeypatch.setattr(setup, "try_compile", lambda fn, mode: fn)  # "compiling" is the hook's first sleep

    class CompilesFirst(Sleepy):
        def on_batch_begin(self, trainer, batch):
            time.sleep(0.6 if trainer.state.global_step == 0 else 0.05)

    clock = CompilesFirst(None)
    tc = TrainingConfig(epochs=1, batch_size=4, compile_mode="default", checkpoint_dir=str(tmp_path / "r"))
    row = Trainer(lm_factory(), CONFIG, tc, hooks=clock).train(lm_samples(16))["metrics_summary"].iloc[0]
    after_compile = clock.ends[-1] - clock.ends[0]  # steps 2 to 4
    assert row["throughput/tokens_per_s"] == pytest.approx(12 * 7 / after_compile, rel=0.05)
    assert row["throughput/samples_per_s"] == pytest.approx(12 / after_compile, rel=0.05)
    assert row["time/step_ms"] < 300 and row["time/train_s"] == pytest.approx(clock.ends[-1] - clock.start, rel=0.05)
    # An epoch of that one step has nothing else to show: it is counted after all.
    tc = tc.replace(batch_size=16, checkpoint_dir=str(tmp_path / "one"))
    row = Trainer(lm_factory(), CONFIG, tc, hooks=CompilesFirst(None)).train(lm_samples(16))["metrics_summary"].iloc[0]
    assert row["throughput/tokens_per_s"] * row["time/train_s"] == pytest.approx(16 * 7) and row["time/step_ms"] >= 600


class SlowSamples(torch.utils.data.Dataset):
    """Samples that take a while to load; counts the time spent loading them."""

    def __init__(self, samples, seconds):
        self.samples, self.seconds, self.loading = samples, seconds, 0.0

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        start = time.perf_counter()
        time.sleep(self.seconds)
        self.loading += time.perf_counter() - start
        return self.samples[i]


def test_data_wait_is_the_share_of_time_spent_in_the_loader(tmp_path):
    tc = TrainingConfig(epochs=1, batch_size=4, checkpoint_dir=str(tmp_path / "r"))
    data = SlowSamples(lm_samples(16), 0.05)

    class EpochOnly(TrainingHooks):  # setup peeks at a sample too: count the epoch's loading
        def on_epoch_begin(self, trainer, epoch):
            data.loading = 0.0

    r = Trainer(lm_factory(), CONFIG, tc, hooks=EpochOnly()).train(data)
    row = r["metrics_summary"].iloc[0]
    assert row["time/data_wait_frac"] >= data.loading / row["time/train_s"] * 0.95
    assert row["time/data_wait_frac"] > 0.5  # loading 16 x 50 ms dominates a tiny model's steps, even on a busy machine
    r = Trainer(lm_factory(), CONFIG, tc.replace(checkpoint_dir=str(tmp_path / "s")), hooks=Sleepy(0.02)).train(lm_samples(16))
    assert r["metrics_summary"].iloc[0]["time/data_wait_frac"] < 0.2  # slow hooks are not data wait


def test_the_flop_counter_agrees_with_the_gpt_formula():
    model = GPT(vocab_size=128, max_seq_len=32, d_model=64, n_layers=2, n_heads=4)
    batch = {"input_ids": torch.randint(0, 128, (4, 32))}
    counted = telemetry.count_flops_per_token(model, batch)
    assert counted == pytest.approx(model.flops_per_token(32), rel=0.05)
    assert all(p.grad is None for p in model.parameters()) and model.training  # the run is not disturbed


def test_mfu_needs_a_known_peak_and_follows_the_formula(tmp_path):
    config = dict(vocab_size=VOCAB, max_seq_len=8, d_model=32, n_layers=1, n_heads=2)
    tc = TrainingConfig(epochs=1, batch_size=4, checkpoint_dir=str(tmp_path / "a"))
    r = Trainer(lambda: GPT(config), config, tc).train(lm_samples(16))
    assert "mfu" not in r["metrics_summary"].columns and "mfu" not in r["telemetry"]  # a CPU: no known peak
    r = Trainer(lambda: GPT(config), config, tc.replace(peak_flops=1e12, checkpoint_dir=str(tmp_path / "b"))).train(lm_samples(16))
    row = r["metrics_summary"].iloc[0]
    flops = 16 * 8 * GPT(config).flops_per_token(8)  # every input token, no padding
    assert row["mfu"] == pytest.approx(flops / row["time/train_s"] / 1e12, rel=1e-6)


def test_a_model_without_a_formula_is_counted_once(tmp_path):
    tc = TrainingConfig(epochs=2, batch_size=4, peak_flops=1e12, checkpoint_dir=str(tmp_path / "r"))
    r = Trainer(lm_factory(), CONFIG, tc).train(lm_samples(16))
    expected = telemetry.count_flops_per_token(TinyLM(), {"input_ids": torch.stack(lm_samples(4))})
    for _, row in r["metrics_summary"].iterrows():
        assert row["mfu"] == pytest.approx(16 * 8 * expected / row["time/train_s"] / 1e12, rel=1e-6)


@pytest.mark.parametrize(("name", "dtype", "peak"), [
    ("NVIDIA H100 80GB HBM3", "bf16", 989.4e12), ("NVIDIA H100 PCIe", "bf16", 756e12), ("NVIDIA H100 NVL", "tf32", 417.5e12),
    ("NVIDIA H200", "bf16", 989.4e12), ("NVIDIA A100-SXM4-80GB", "bf16", 312e12), ("NVIDIA L4", "bf16", 121e12),
    ("NVIDIA L40S", "bf16", 362e12), ("NVIDIA A10G", "fp32", 31.2e12), ("Tesla V100-SXM2-16GB", "bf16", None),
    ("Some Future GPU", "bf16", None),
])
def test_peak_flops_by_device_name_and_dtype(monkeypatch, name, dtype, peak):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert telemetry.peak_flops(torch.device("cuda"), dtype) == peak
    assert telemetry.peak_flops(torch.device("cuda"), dtype, override=5e12) == 5e12
    assert telemetry.peak_flops(torch.device("cpu"), dtype) is None


class DeviceReads(TorchDispatchMode):
    """Counts host reads (item/float/int/bool/tolist) of values computed from the model's
    parameters: on a GPU each one waits for the device. Values the host computed itself
    from a batch (target counts) are not derived from parameters and do not count."""

    def __init__(self, params):
        super().__init__()
        self.derived = {id(p): p for p in params}  # strong references: ids are never reused
        self.reads = 0

    def __contains__(self, tensor):
        return id(tensor) in self.derived

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if any(t in self for t in inputs):
            if func is torch.ops.aten._local_scalar_dense.default:
                self.reads += 1
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    self.derived[id(t)] = t
        return out


def _reads_and_steps(tmp_path, accum, monkeypatch):
    model = lm_factory(dropout=0.0)()
    mode = DeviceReads(list(model.parameters()))
    real_tolist = torch.Tensor.tolist

    def counted_tolist(self):
        if self in mode:
            mode.reads += 1
        return real_tolist(self)

    monkeypatch.setattr(torch.Tensor, "tolist", counted_tolist)
    tc = TrainingConfig(epochs=1, batch_size=2, gradient_accumulation_steps=accum, checkpoint_dir=str(tmp_path / f"a{accum}"))
    with mode:
        r = Trainer(model, CONFIG, tc).train(lm_samples(32))
    return mode.reads, r["global_step"]


def test_host_reads_per_optimizer_step_do_not_grow_with_accumulation(tmp_path, monkeypatch):
    reads_1, steps_1 = _reads_and_steps(tmp_path, 1, monkeypatch)
    reads_4, steps_4 = _reads_and_steps(tmp_path, 4, monkeypatch)
    assert (steps_1, steps_4) == (16, 4)
    # One read per optimizer step (loss and gradient norm together), plus the same few per
    # epoch (its metric sums): a read per micro-batch would add 16, a second one per step 16 / 4.
    overhead_1, overhead_4 = reads_1 - steps_1, reads_4 - steps_4
    assert overhead_1 == overhead_4 <= 3


def test_gpt2_small_preset():
    model = GPT({"preset": "gpt2-small"})
    cfg = model.config
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.max_seq_len, cfg.vocab_size) == (12, 768, 12, 1024, 50304)
    assert model.head.weight is model.tok.weight
    assert sum(p.numel() for p in model.parameters()) == 124_475_904
    assert GPT({"preset": "gpt2-small", "n_layers": 2}).config.n_layers == 2  # the config's own fields win
    with pytest.raises(ValueError, match="unknown GPT preset 'gpt3'"):
        GPT(preset="gpt3")
