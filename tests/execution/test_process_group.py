"""ProcessGroupContext: the engine loop on a torch.distributed process group without Ray (a
world of one here), sharded with FSDP; resuming from any sharded checkpoint is exact."""


import pytest
import torch
from trainyard import Trainer, TrainingConfig, TrainingHooks
from trainyard.engine.context import LocalContext
from trainyard.execution.parallel import ProcessGroupContext
from trainyard.models import GPT

from tests.helpers import VOCAB, lm_samples

CONFIG = {"vocab_size": VOCAB, "max_seq_len": 8, "d_model": 16, "n_layers": 2, "n_heads": 2}
DATA = lm_samples(24)


class StopAt(TrainingHooks):
    def __init__(self, epoch, batch):
        self.at = (epoch, batch)

    def on_batch_end(self, trainer, batch, outputs):
        if (trainer.state.epoch, trainer.state.batch_in_epoch) == self.at:
            trainer.request_stop("test")


def train(tmp, parallelism="fsdp", hooks=(), resume=False):
    cfg = TrainingConfig(learning_rate=1e-2, batch_size=4, gradient_accumulation_steps=2, max_grad_norm=0.5, epochs=2,
                         parallelism=parallelism, checkpoint_dir=str(tmp), random_seed=2)
    ctx = ProcessGroupContext(cfg) if parallelism == "fsdp" else LocalContext("cpu")
    return Trainer(lambda: GPT(CONFIG), CONFIG, cfg, hooks=list(hooks)).run(ctx, DATA, resume_from=str(tmp) if resume else None)


def test_sharded_on_one_rank_trains_as_unsharded(process_group_of_one, tmp_path):
    plain, sharded = train(tmp_path / "plain", "ddp"), train(tmp_path / "fsdp")
    assert sharded["loss_history"] == pytest.approx(plain["loss_history"], abs=1e-6)
    assert {".metadata", "__0_0.distcp", "state.pt"} <= {p.name for p in (tmp_path / "fsdp").glob("*/*")}


@pytest.mark.parametrize("stop", [(1, 1), (1, 3), (2, 2)], ids=["first-window", "mid-window", "window-end"])
def test_resuming_a_sharded_checkpoint_is_exact(process_group_of_one, tmp_path, stop):
    full = train(tmp_path / "full")
    train(tmp_path / "cut", hooks=[StopAt(*stop)])  # (1, 1): before the first optimizer step
    resumed = train(tmp_path / "cut", resume=True)
    assert resumed["loss_history"] == full["loss_history"]
    assert resumed["metrics_summary"]["train/loss"].tolist() == full["metrics_summary"]["train/loss"].tolist()


def test_fsdp_needs_a_context_that_shards(tmp_path):
    cfg = TrainingConfig(parallelism="fsdp", checkpoint_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"needs a run context that shards the model, and LocalContext does not.*training_config="):
        Trainer(lambda: GPT(CONFIG), CONFIG, cfg).run(LocalContext("cpu"), DATA)


class NaNAfter(GPT):
    def __init__(self, after):
        super().__init__(CONFIG)
        self.calls, self.after = 0, after

    def forward(self, input_ids):
        self.calls += 1
        out = super().forward(input_ids)
        return out * float("nan") if self.calls > self.after else out


def test_a_nan_under_fsdp_stops_at_its_step_and_no_sharded_checkpoint_holds_it(process_group_of_one, tmp_path):
    from trainyard.engine import checkpoint as ck
    from trainyard.engine import run_folder
    from trainyard.engine.shards import full_model_state

    cfg = TrainingConfig(batch_size=4, gradient_accumulation_steps=2, epochs=2, parallelism="fsdp", checkpoint_every_n_steps=1,
                         use_lr_schedule=False, checkpoint_dir=str(tmp_path))
    # 6 micro-batches (3 steps) an epoch: forward 9 is epoch 2's third, in global step 5.
    with pytest.raises(FloatingPointError, match=r"loss is nan at epoch 2, step 5"):
        Trainer(lambda: NaNAfter(8), CONFIG, cfg).run(ProcessGroupContext(cfg), DATA)
    saved = run_folder.list_checkpoints(tmp_path)
    assert saved and all(ck.load(p).state["position"]["global_step"] <= 4 for p in saved)
    for p in saved:
        assert all(torch.isfinite(t).all() for t in full_model_state(p, GPT(CONFIG)).values())


def test_a_sharded_checkpoint_resumes_unsharded_in_process(process_group_of_one, tmp_path):
    first = TrainingConfig(epochs=1, batch_size=4, learning_rate=1e-2, parallelism="fsdp", checkpoint_dir=str(tmp_path / "fsdp"))
    saved = Trainer(lambda: GPT(CONFIG), CONFIG, first).run(ProcessGroupContext(first), DATA)["checkpoint_path"]
    resumed = {}
    for parallelism in ("fsdp", "ddp"):  # sharded again, or one whole model in this process
        cfg = first.replace(epochs=2, parallelism=parallelism, checkpoint_dir=str(tmp_path / f"again-{parallelism}"))
        ctx = ProcessGroupContext(cfg) if parallelism == "fsdp" else LocalContext("cpu")
        resumed[parallelism] = Trainer(lambda: GPT(CONFIG), CONFIG, cfg).run(ctx, DATA, resume_from=saved)
    assert list(resumed["ddp"]["metrics_summary"]["epoch"]) == [1, 2]
    assert resumed["ddp"]["loss_history"] == pytest.approx(resumed["fsdp"]["loss_history"], abs=1e-6)
