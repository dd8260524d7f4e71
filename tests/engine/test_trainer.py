import math
import warnings
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset
from trainyard import TaskSpec, Trainer, TrainingConfig, TrainingHooks

from tests.helpers import VOCAB, TinyClassifier, TinyLM, TinyRegressor, lm_factory, lm_samples

CONFIG = SimpleNamespace(vocab_size=VOCAB)
RESULT_KEYS = [
    "loss_history", "final_loss", "final_perplexity", "training_time", "metrics_summary",
    "best_epoch", "grad_norm_history", "amp_enabled", "checkpoint_path",
]
SUMMARY_COLUMNS = [
    "epoch", "train/loss", "val/loss", "train/accuracy", "val/accuracy",
    "train/perplexity", "val/perplexity", "train/learning_rate",
]


def train(model=None, data=None, val=None, ckdir=None, task_spec=None, hooks=None, config=CONFIG, **cfg):
    cfg.setdefault("learning_rate", 1e-2)
    cfg.setdefault("epochs", 2)
    tc = TrainingConfig(checkpoint_dir=ckdir, **cfg)
    trainer = Trainer(model or lm_factory(), config, tc, task_spec, hooks=hooks)
    return trainer.train(lm_samples() if data is None else data, val)


def test_results_contract_with_validation(ckdir):
    r = train(val=lm_samples(8, seed=5), ckdir=ckdir, batch_size=4, gradient_accumulation_steps=2)
    for key in RESULT_KEYS:
        assert key in r
    assert len(r["loss_history"]) == 2 * 3  # 24 samples / batch 4 = 6 batches = 3 steps per epoch
    assert len(r["grad_norm_history"]) == len(r["loss_history"])
    summary = r["metrics_summary"]
    assert isinstance(summary, pd.DataFrame) and list(summary["epoch"]) == [1, 2]
    assert all(c in summary.columns for c in SUMMARY_COLUMNS)
    assert r["final_loss"] == pytest.approx(summary["val/loss"].iloc[-1])
    assert r["final_perplexity"] == pytest.approx(math.exp(r["final_loss"]))
    assert r["best_epoch"] == int(summary.loc[summary["val/loss"].idxmin(), "epoch"])
    assert r["amp_enabled"] is False and r["training_time"] > 0
    assert r["checkpoint_path"].startswith(ckdir) and "e0002" in r["checkpoint_path"]
    # The epoch's train loss is the target-weighted mean of its steps (equal counts here).
    assert summary["train/loss"].iloc[0] == pytest.approx(sum(r["loss_history"][:3]) / 3, rel=1e-6)
    assert summary["train/perplexity"].iloc[0] == pytest.approx(math.exp(summary["train/loss"].iloc[0]))


def test_without_validation_final_loss_is_the_last_training_loss(ckdir):
    r = train(ckdir=ckdir)
    s = r["metrics_summary"]
    assert s["val/loss"].isna().all()
    assert r["final_loss"] == pytest.approx(s["train/loss"].iloc[-1])
    assert r["best_epoch"] == int(s.loc[s["train/loss"].idxmin(), "epoch"])


def test_training_reduces_the_loss(ckdir):
    r = train(model=lm_factory(dropout=0.0), ckdir=ckdir, epochs=8, learning_rate=3e-2, use_lr_schedule=False)
    s = r["metrics_summary"]
    assert s["train/loss"].iloc[-1] < s["train/loss"].iloc[0] * 0.8


def _columns(samples):
    return {"input_ids": [s.tolist() for s in samples]}


class MapStyle(Dataset):
    def __init__(self, samples):
        self.samples = samples

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        return {"input_ids": self.samples[i]}


def _formats(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    samples = lm_samples()
    table = pa.table(_columns(samples))
    pq.write_table(table, tmp_path / "train.parquet")
    return {
        "list": samples,
        "tensor_dataset": TensorDataset(torch.stack(samples)),
        "map_style": MapStyle(samples),
        "dict_columns": _columns(samples),
        "dict_of_tensor": {"input_ids": torch.stack(samples)},
        "pyarrow_table": table,
        "parquet_path": str(tmp_path / "train.parquet"),
        "list_of_dicts": [{"input_ids": s, "other": "ignored"} for s in samples],
    }


def test_every_data_format_trains_identically(tmp_path):
    results = {}
    for name, data in _formats(tmp_path).items():
        results[name] = train(data=data, ckdir=str(tmp_path / name))["loss_history"]
    reference = results.pop("list")
    for name, losses in results.items():
        assert losses == reference, name


def test_hugging_face_dataset_trains_like_a_list(tmp_path):
    datasets = pytest.importorskip("datasets")
    samples = lm_samples()
    hf = datasets.Dataset.from_dict(_columns(samples))
    assert train(data=hf, ckdir=str(tmp_path / "a"))["loss_history"] == train(data=samples, ckdir=str(tmp_path / "b"))["loss_history"]


def test_gradient_accumulation_equals_the_bigger_batch_including_remainders(tmp_path):
    # 26 samples: batch 8 -> 3 full batches and a remainder of 2; batch 2 x 4 ends with a
    # short window of one batch. Both must take the same steps with the same losses.
    data = lm_samples(26)
    common = dict(data=data, model=lm_factory(dropout=0.0), epochs=2)
    big = train(ckdir=str(tmp_path / "big"), batch_size=8, **common)
    small = train(ckdir=str(tmp_path / "small"), batch_size=2, gradient_accumulation_steps=4, **common)
    assert len(big["loss_history"]) == len(small["loss_history"]) == 8
    assert small["loss_history"] == pytest.approx(big["loss_history"], rel=1e-5, abs=1e-6)
    assert small["grad_norm_history"] == pytest.approx(big["grad_norm_history"], rel=1e-4)


def test_accumulation_normalises_by_targets_when_padding_varies(tmp_path):
    g = torch.Generator().manual_seed(3)
    data = [torch.randint(3, VOCAB, (int(n),), generator=g) for n in torch.randint(3, 10, (16,), generator=g)]
    config = SimpleNamespace(vocab_size=VOCAB, pad_token_id=0)
    common = dict(data=data, model=lm_factory(dropout=0.0), config=config, epochs=1)
    big = train(ckdir=str(tmp_path / "big"), batch_size=8, **common)
    small = train(ckdir=str(tmp_path / "small"), batch_size=2, gradient_accumulation_steps=4, **common)
    assert small["loss_history"] == pytest.approx(big["loss_history"], rel=1e-5)


def test_grad_norm_history_records_the_norm_before_clipping(ckdir):
    r = train(ckdir=ckdir, max_grad_norm=1e-4, learning_rate=1e-3)
    assert all(n > 1e-4 for n in r["grad_norm_history"])


def test_deterministic_runs_are_bit_identical(tmp_path):
    a = train(ckdir=str(tmp_path / "a"), deterministic=True)
    b = train(ckdir=str(tmp_path / "b"), deterministic=True)
    assert a["loss_history"] == b["loss_history"] and a["grad_norm_history"] == b["grad_norm_history"]
    assert not torch.are_deterministic_algorithms_enabled()  # restored afterwards


def test_seed_changes_the_run(tmp_path):
    a = train(ckdir=str(tmp_path / "a"), random_seed=1)
    b = train(ckdir=str(tmp_path / "b"), random_seed=2)
    assert a["loss_history"] != b["loss_history"]


def test_cpu_amp_runs_bf16_autocast_and_reports_it(ckdir):
    seen = []

    class Probe(TinyLM):
        def forward(self, input_ids):
            out = super().forward(input_ids)
            seen.append(out.dtype)
            return out

    r = train(model=Probe(), ckdir=ckdir, use_amp=True, epochs=1)
    assert r["amp_enabled"] is True and set(seen) == {torch.bfloat16}
    assert all(math.isfinite(x) for x in r["loss_history"])


def test_lr_schedule_warms_up_then_decays(ckdir):
    seen = []
    from trainyard import TrainingHooks

    class LR(TrainingHooks):
        def on_batch_end(self, trainer, batch, outputs):
            seen.append(trainer.optimizer.param_groups[0]["lr"])

    train(ckdir=ckdir, hooks=LR(), learning_rate=1e-2, warmup_steps=3, epochs=4, batch_size=4)
    # on_batch_end comes after the batch's optimizer step: seen[k] is the lr of step k.
    assert seen[0] < seen[1] < seen[2] == pytest.approx(1e-2) == seen[3]
    assert seen[-1] < seen[10] < seen[4]
    assert seen[-1] >= 1e-3 - 1e-12  # floor: min_lr_ratio 0.1


def test_constant_lr_without_schedule(ckdir):
    r = train(ckdir=ckdir, use_lr_schedule=False)
    assert set(r["metrics_summary"]["train/learning_rate"]) == {1e-2}


class TupleOut(TinyLM):
    def forward(self, input_ids):
        return (super().forward(input_ids), "aux")


class DictOut(TinyLM):
    def forward(self, input_ids):
        return {"logits": super().forward(input_ids)}


class AttrOut(TinyLM):
    def forward(self, input_ids):
        return SimpleNamespace(logits=super().forward(input_ids), hidden=None)


@pytest.mark.parametrize("cls", [TupleOut, DictOut, AttrOut])
def test_model_output_forms_train_like_a_plain_tensor(tmp_path, cls):
    torch.manual_seed(1)
    plain = train(model=TinyLM(), ckdir=str(tmp_path / "a"))["loss_history"]
    torch.manual_seed(1)
    assert train(model=cls(), ckdir=str(tmp_path / "b"))["loss_history"] == plain


def test_model_output_without_logits_is_a_clear_error(ckdir):
    class Bad(TinyLM):
        def forward(self, input_ids):
            return {"scores": super().forward(input_ids)}

    with pytest.raises(TypeError, match="cannot find logits"):
        train(model=Bad(), ckdir=ckdir)


def test_a_factory_model_is_seeded_by_random_seed(tmp_path):
    a = train(model=lambda: TinyLM(), ckdir=str(tmp_path / "a"), random_seed=7)
    b = train(model=lambda: TinyLM(), ckdir=str(tmp_path / "b"), random_seed=7)
    assert a["loss_history"] == b["loss_history"]


def test_classification_is_detected_and_reports_accuracy(ckdir):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, VOCAB, (30, 6), generator=g)
    y = x[:, 0] % 3
    r = train(model=TinyClassifier(), data=TensorDataset(x, y), val=TensorDataset(x, y), ckdir=ckdir, epochs=3)
    s = r["metrics_summary"]
    assert s["val/accuracy"].between(0, 1).all()
    assert "train/exact_match" not in s.columns


def test_regression_is_detected_from_float_labels(ckdir):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 5, generator=g)
    y = x.sum(1, keepdim=True)
    r = train(model=TinyRegressor(), data=TensorDataset(x, y), val=TensorDataset(x, y), ckdir=ckdir, epochs=5, learning_rate=5e-2)
    s = r["metrics_summary"]
    assert s["val/loss"].iloc[-1] < s["val/loss"].iloc[0]
    assert s["train/accuracy"].isna().all()


def test_task_detection_is_logged(ckdir, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="trainyard"):
        train(ckdir=ckdir, epochs=1)
    assert "training as 'language_modeling'" in caplog.text


def test_labels_of_the_wrong_length_are_refused_not_read_as_classification(ckdir, tmp_path):
    """Labels that are sequences but not of input_ids' shape were auto-detected as
    'classification' and then failed inside the loss; in memory and in Parquet alike."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    samples = [{"input_ids": s, "labels": s[:3]} for s in lm_samples(8)]
    message = r"labels of shape \(3,\) fit no task with input_ids of shape \(8,\): language modelling needs labels shaped like input_ids"
    with pytest.raises(ValueError, match=message):
        train(data=samples, ckdir=ckdir)
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"input_ids": [s["input_ids"].tolist() for s in samples], "labels": [s["labels"].tolist() for s in samples]}), path)
    with pytest.raises(ValueError, match=message):
        train(data=str(path), ckdir=str(tmp_path / "ck2"))


class Steps(TrainingHooks):
    def __init__(self):
        self.steps = 0

    def on_step_end(self, trainer, step, metrics):
        self.steps += 1


@pytest.mark.parametrize(("bad", "message"), [
    (VOCAB, rf"train_data: token ids run from 3 to {VOCAB}, but the model embeds ids 0 to {VOCAB - 1} \(vocab_size {VOCAB}\): raise "
            rf"the model's vocab_size to at least {VOCAB + 1}"),
    (-1, r"train_data: token ids run from -1 to .*; negative ids are no tokens"),
    (2.5, r"train_data: input_ids hold floating-point values, but the model embeds token ids"),
])
def test_token_ids_the_model_cannot_embed_are_refused_before_the_first_step(tmp_path, bad, message):
    """They ended in 'IndexError: index out of range in self' mid-run."""
    samples = lm_samples(8)
    samples[5] = samples[5].clone().double() if isinstance(bad, float) else samples[5].clone()
    samples[5][2] = bad
    hooks = Steps()
    with pytest.raises(ValueError, match=message):
        train(data=samples, ckdir=str(tmp_path / "a"), hooks=hooks)
    assert hooks.steps == 0


def test_parquet_ids_are_checked_from_the_files_statistics_and_other_datasets_batch_by_batch(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [s.tolist() for s in lm_samples(16)]
    rows[13][4] = VOCAB + 7
    pq.write_table(pa.table({"input_ids": rows}), tmp_path / "bad.parquet", row_group_size=4)
    hooks = Steps()
    with pytest.raises(ValueError, match=rf"train_data: token ids run from 3 to {VOCAB + 7}, but the model embeds ids 0 to {VOCAB - 1}"):
        train(data=str(tmp_path / "bad.parquet"), ckdir=str(tmp_path / "a"), hooks=hooks)
    assert hooks.steps == 0

    class Mine(torch.utils.data.Dataset):  # a user's own dataset: no range is known up front
        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            return torch.tensor(rows[i])

    with pytest.raises(ValueError, match=rf"train_data: token ids run from \d+ to {VOCAB + 7}, but the model embeds ids 0 to {VOCAB - 1}"):
        train(data=Mine(), ckdir=str(tmp_path / "b"), batch_size=4, shuffle_chunk_rows=16, epochs=1)


def test_explicit_task_that_does_not_fit_the_model_is_a_clear_error(ckdir):
    with pytest.raises(ValueError, match="classification.*batch, num_classes"):
        train(ckdir=ckdir, task_spec=TaskSpec(name="classification", modality="text"), data=TensorDataset(torch.stack(lm_samples()), torch.zeros(24, dtype=torch.long)))


def test_language_modeling_ignores_pad_positions(tmp_path):
    base = lm_samples(8)
    padded = [torch.cat([s, torch.zeros(4, dtype=torch.long)]) for s in base]
    config = SimpleNamespace(vocab_size=VOCAB, pad_token_id=0)
    plain = train(model=lm_factory(dropout=0.0), data=base, config=config, ckdir=str(tmp_path / "a"), epochs=1)
    # Trailing pads only extend the sequence; with causal-free TinyLM the scored positions
    # are the same tokens, so the loss must be identical if pads are ignored.
    with_pad = train(model=lm_factory(dropout=0.0), data=padded, config=config, ckdir=str(tmp_path / "b"), epochs=1)
    assert with_pad["loss_history"] == pytest.approx(plain["loss_history"], rel=1e-6)


def test_padding_needed_without_pad_token_id_says_where_to_set_it(ckdir):
    data = [torch.randint(3, VOCAB, (n,)) for n in (5, 7, 6, 8)]
    with pytest.raises(ValueError, match=r"config.pad_token_id.*preprocessing_config=\{'pad_token_id'"):
        train(data=data, ckdir=ckdir, batch_size=4)


def test_pad_token_id_from_task_spec_is_used(ckdir):
    data = [torch.randint(3, VOCAB, (n,)) for n in (5, 7, 6, 8)]
    spec = TaskSpec(name="language_modeling", modality="text", preprocessing_config={"pad_token_id": 0})
    r = train(data=data, ckdir=ckdir, batch_size=4, task_spec=spec)
    assert all(math.isfinite(x) for x in r["loss_history"])


class NaNAfter(TinyLM):
    def __init__(self, after):
        super().__init__()
        self.calls, self.after = 0, after

    def forward(self, input_ids):
        self.calls += 1
        out = super().forward(input_ids)
        return out * float("nan") if self.calls > self.after else out


def test_nan_loss_stops_with_the_step_and_saves_no_checkpoint_of_it(tmp_path):
    from trainyard.engine import checkpoint as ck
    from trainyard.engine import run_folder

    run = tmp_path / "run"
    # 6 batches per epoch: the epoch-1 checkpoint exists, the NaN comes at step 9.
    with pytest.raises(FloatingPointError, match=r"loss is nan at epoch 2, step 9"):
        train(model=NaNAfter(8), ckdir=str(run), use_lr_schedule=False, checkpoint_every_n_steps=1)
    saved = [p.name for p in run_folder.list_checkpoints(run)]
    assert saved and all(ck.load(run / n).state["position"]["global_step"] <= 8 for n in saved)
    for n in saved:
        state = ck.load(run / n)
        assert all(math.isfinite(v) for v in state.model.values() for v in v.flatten().tolist())


@pytest.mark.parametrize("fused", [False, True], ids=["foreach", "fused"])
def test_a_non_finite_step_leaves_the_model_as_it_was(tmp_path, monkeypatch, fused):
    """The fused optimizer (CUDA's) is stepped before the loss is read, guarded on the
    device: the weights the user finds after the error are those of the last good step."""
    import copy

    from trainyard.engine import setup

    if fused:
        real = setup.build_optimizer
        def fused_adamw(model, cfg):
            groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in real(model, cfg).param_groups]
            return torch.optim.AdamW(groups, lr=cfg.learning_rate, fused=True)

        monkeypatch.setattr(setup, "build_optimizer", fused_adamw)
    snapshots = []

    class Snapshot(TrainingHooks):
        def on_batch_end(self, trainer, batch, outputs):
            snapshots.append(copy.deepcopy(trainer.model.state_dict()))

    model = NaNAfter(8)
    with pytest.raises(FloatingPointError, match=r"loss is nan at epoch 2, step 9"):
        train(model=model, hooks=Snapshot(), ckdir=str(tmp_path / "r"), use_lr_schedule=False)
    assert len(snapshots) == 8
    assert all(torch.equal(v, snapshots[-1][k]) for k, v in model.state_dict().items())


def test_compile_falls_back_to_eager_with_one_warning(ckdir, monkeypatch, tmp_path):
    def broken_compile(model, mode=None):
        class Broken(nn.Module):
            def __init__(self):
                super().__init__()
                self._orig_mod = model

            def forward(self, *a, **k):
                raise RuntimeError("no compiler backend here")

        return Broken()

    eager = train(ckdir=str(tmp_path / "eager"))
    monkeypatch.setattr(torch, "compile", broken_compile)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = train(ckdir=ckdir, compile_mode="default")
    messages = [str(w.message) for w in caught if "torch.compile" in str(w.message)]
    assert len(messages) == 1 and "eager" in messages[0]
    assert r["loss_history"] == eager["loss_history"]


@pytest.mark.slow
def test_compile_default_really_compiles_on_cpu(tmp_path):
    # answers after a masked prompt: exact match is measured (on free text it is not)
    data = [{"input_ids": ids, "labels": torch.cat([torch.full((5,), -100), ids[5:]])} for ids in lm_samples()]
    eager = train(model=lm_factory(dropout=0.0), data=data, ckdir=str(tmp_path / "eager"), epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        compiled = train(model=lm_factory(dropout=0.0), data=data, ckdir=str(tmp_path / "c"), epochs=1, compile_mode="default")
    assert compiled["loss_history"] == pytest.approx(eager["loss_history"], rel=1e-4)
    for metric in ("train/accuracy", "train/exact_match"):  # the compiled loss computes these too
        assert list(compiled["metrics_summary"][metric]) == pytest.approx(list(eager["metrics_summary"][metric]), abs=1e-3)


def test_distributed_arguments_are_checked_before_anything_starts():
    with pytest.raises(TypeError, match=r"a number of workers, a range \(min, max\) of them \(elastic: .*\), or a ray.train.ScalingConfig; got 'two'"):
        Trainer(TinyLM(), CONFIG, TrainingConfig(), scaling="two")
    with pytest.raises(TypeError, match=r"a range \(min, max\).*got \(3, 2\)"):
        Trainer(TinyLM(), CONFIG, TrainingConfig(), scaling=(3, 2))
    with pytest.raises(TypeError, match="ScalingConfig"):
        Trainer(TinyLM(), CONFIG, TrainingConfig(), scaling=0)
    with pytest.raises(ValueError, match="pass scaling=N"):
        Trainer(TinyLM(), CONFIG, TrainingConfig(), run_config=object())


@pytest.mark.parametrize(
    "data, message",
    [
        ([], "empty"),
        (42, "unsupported data type"),
        ({"labels": [1, 2]}, "'input_ids' column"),
        ({"input_ids": [[1, 2], [3, 4]], "labels": [1]}, "equal lengths"),
        ("missing.parquet", "no such file"),
        (torch.utils.data.DataLoader(lm_samples()), "not a DataLoader"),
    ],
)
def test_bad_data_is_a_clear_error(ckdir, data, message):
    with pytest.raises((ValueError, TypeError, FileNotFoundError), match=message):
        train(data=data, ckdir=ckdir)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        Trainer("gpt2", CONFIG, TrainingConfig())
    with pytest.raises(TypeError, match="training_config must be a TrainingConfig"):
        Trainer(TinyLM(), CONFIG, 5)
    with pytest.raises(ValueError, match="TaskSpec.name"):
        TaskSpec(name="translation")
    with pytest.raises(TypeError, match="factory returned"):
        Trainer(lambda: 3, CONFIG, TrainingConfig()).train(lm_samples())


def test_training_config_may_be_a_dict(ckdir):
    r = Trainer(lm_factory(), CONFIG, {"epochs": 1, "checkpoint_dir": ckdir}).train(lm_samples())
    assert len(r["metrics_summary"]) == 1


def test_the_users_model_object_is_trained_in_place(ckdir):
    model = TinyLM()
    before = model.out.weight.detach().clone()
    train(model=model, ckdir=ckdir, epochs=1)
    assert not torch.equal(before, model.out.weight)


class _Terminal:
    """A stderr that says it is a terminal and keeps what is written."""

    def __init__(self):
        self.text = ""

    def isatty(self):
        return True

    def write(self, s):
        self.text += s
        return len(s)

    def flush(self):
        pass


def test_a_progress_bar_is_shown_only_on_a_terminal(ckdir, monkeypatch, tmp_path):
    import logging

    # The bar follows the log level (TRAINYARD_LOG_LEVEL=WARNING hides it too). setLevel,
    # not assigning .level: loggers cache isEnabledFor answers until setLevel clears them.
    logger = logging.getLogger("trainyard")
    previous = logger.level
    logger.setLevel(logging.INFO)
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    import tqdm.auto

    class Eager(tqdm.auto.tqdm):  # redraws at every batch, however fast: the step's loss shows
        def __init__(self, *args, **kwargs):
            super().__init__(*args, mininterval=0, **kwargs)

    monkeypatch.setattr("trainyard.engine.observers.tqdm", Eager)
    try:
        train(ckdir=ckdir, epochs=2)
    finally:
        logger.setLevel(previous)
    assert "epoch 1/2:" in terminal.text and "epoch 2/2:" in terminal.text and "/6 [" in terminal.text
    assert "loss=" in terminal.text  # each optimizer step's loss, beside the bar

    class Pipe(_Terminal):
        def isatty(self):
            return False

    pipe = Pipe()
    monkeypatch.setattr("sys.stderr", pipe)
    train(ckdir=str(tmp_path / "other"), epochs=2)
    assert pipe.text == ""  # no bar; the epoch lines go through the logger only


def test_a_stop_inside_a_window_after_a_nan_saves_nothing_of_it(tmp_path):
    """The NaN comes in the first micro-batch of a window and a stop is requested right
    after it: the window's sums and gradients are not finite, and are never checkpointed."""
    from trainyard.engine import checkpoint as ck
    from trainyard.engine import run_folder

    class StopThere(TrainingHooks):
        def on_batch_end(self, trainer, batch, outputs):
            if (trainer.state.epoch, trainer.state.batch_in_epoch) == (2, 3):
                trainer.request_stop("cancelled")

    run = tmp_path / "run"
    # batch 4, accumulation 2: 3 windows an epoch; forward 9 is epoch 2's third micro-batch, the first of step 5.
    with pytest.raises(FloatingPointError, match=r"the loss is not finite at epoch 2, step 5 \(a stop was requested inside"):
        train(model=NaNAfter(8), ckdir=str(run), batch_size=4, gradient_accumulation_steps=2, use_lr_schedule=False, hooks=StopThere())
    saved = run_folder.list_checkpoints(run)
    assert [p.name for p in saved] == ["checkpoint_e0001_b0000006"]
    assert ck.load(saved[-1]).state["window"] is None
