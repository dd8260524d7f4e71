"""activation_checkpointing=True: each block's activations are recomputed in the backward
pass, with the same losses (dropout masks replayed); the blocks are found or named."""

import pytest
from trainyard import Trainer, TrainingConfig, TrainingHooks
from trainyard.experiment import apply_overrides
from trainyard.experiment.spec import parse_spec
from trainyard.models import GPT

from tests.helpers import VOCAB, lm_factory, lm_samples

CONFIG = {"vocab_size": VOCAB, "max_seq_len": 8, "d_model": 16, "n_layers": 2, "n_heads": 2, "dropout": 0.1}


class CountAttention(TrainingHooks):
    """How many times the attention of each block runs: once a micro-batch, or twice when
    its block is recomputed in the backward pass."""

    def __init__(self):
        self.calls = 0

    def on_train_begin(self, trainer, train_data, val_data):
        for module in trainer.model.modules():
            if type(module).__name__ == "CausalSelfAttention":
                module.register_forward_hook(lambda *args: setattr(self, "calls", self.calls + 1))


def train(**settings):
    counter = CountAttention()
    cfg = TrainingConfig(learning_rate=1e-2, batch_size=4, gradient_accumulation_steps=2, epochs=2, random_seed=7, **settings)
    results = Trainer(lambda: GPT(CONFIG), CONFIG, cfg, hooks=counter).train(lm_samples(16), lm_samples(4, seed=3))
    return results, counter.calls


def test_recomputed_blocks_give_the_same_losses(tmp_path):
    plain, plain_calls = train(checkpoint_dir=str(tmp_path / "plain"))
    recomputed, calls = train(activation_checkpointing=True, checkpoint_dir=str(tmp_path / "ac"))
    named, named_calls = train(activation_checkpointing=True, fsdp_wrap=["Block"], checkpoint_dir=str(tmp_path / "named"))
    train_forwards = 2 * 4 * 2  # 2 blocks x 4 micro-batches x 2 epochs
    assert calls - plain_calls == train_forwards == named_calls - plain_calls  # each training forward once more; eval not at all
    assert recomputed["loss_history"] == plain["loss_history"] == named["loss_history"]  # dropout masks are replayed
    assert recomputed["metrics_summary"]["val/loss"].tolist() == plain["metrics_summary"]["val/loss"].tolist()


def test_blocks_that_cannot_be_found_are_named():
    with pytest.raises(ValueError, match=r"fsdp_wrap=\['Layer'\] matches no module of GPT; its module classes are \[.*'Block'"):
        Trainer(lambda: GPT(CONFIG), CONFIG, TrainingConfig(activation_checkpointing=True, fsdp_wrap=["Layer"])).train(lm_samples(4))
    with pytest.raises(ValueError, match=r"found no repeated blocks in TinyLM.*fsdp_wrap=\['MyBlock'\]"):
        Trainer(lm_factory(), {"vocab_size": VOCAB}, TrainingConfig(activation_checkpointing=True)).train(lm_samples(4))


def test_the_settings_come_from_yaml_and_the_command_line():
    spec = apply_overrides({"training": {"epochs": 1}}, ["parallelism=fsdp", "fsdp_wrap=[Block]", "activation_checkpointing=true", "use_amp=true"])
    cfg = parse_spec(spec).training
    assert (cfg.parallelism, cfg.fsdp_wrap, cfg.activation_checkpointing) == ("fsdp", ("Block",), True)
    with pytest.raises(ValueError, match=r"parallelism='zero3' is invalid: must be one of \['ddp', 'fsdp'\]"):
        parse_spec(apply_overrides({}, ["parallelism=zero3"]))
