import re

import pytest
import torch
from trainyard.data import CharTokenizer, load_builtin, make_addition_dataset
from trainyard.data.addition import TOKENIZER, seq_len


def test_samples_are_correct_sums_with_only_the_answer_scored():
    data = make_addition_dataset(50, digits=3, seed=1)
    assert data["input_ids"].shape == (50, seq_len(3))
    for ids, labels in zip(data["input_ids"].tolist(), data["labels"].tolist()):
        text = TOKENIZER.decode(ids)
        a, rest = text.split("+")
        b, answer = rest.split("=")
        assert int(answer[::-1]) == int(a) + int(b)
        scored = [t for t in labels if t != -100]
        assert TOKENIZER.decode(scored) == answer and scored[-1] == TOKENIZER.eos_token_id


def test_generation_is_deterministic_and_splits_do_not_overlap():
    assert torch.equal(make_addition_dataset(20, seed=3)["input_ids"], make_addition_dataset(20, seed=3)["input_ids"])
    train, val = load_builtin("addition", train_size=300, val_size=50, digits=2)
    as_set = lambda d: {tuple(r) for r in d["input_ids"].tolist()}  # noqa: E731
    assert not as_set(train) & as_set(val)
    assert len(as_set(train)) == 300


def test_impossible_requests_are_clear_errors():
    with pytest.raises(ValueError, match="only 100 distinct"):
        make_addition_dataset(101, digits=1)
    with pytest.raises(ValueError, match="unknown built-in dataset"):
        load_builtin("mnist")


def test_char_tokenizer_round_trip_and_errors():
    tok = CharTokenizer.bytes()
    assert tok.vocab_size == 259
    assert tok.decode(tok.encode("héllo", add_bos=True, add_eos=True)) == "héllo"
    with pytest.raises(ValueError, match="not in this tokenizer"):
        TOKENIZER.encode("12a")


@pytest.mark.slow
def test_a_small_gpt_learns_addition(tmp_path):
    from trainyard import Trainer, TrainingConfig
    from trainyard.data.addition import model_config, solve
    from trainyard.models import GPT

    train, val = load_builtin("addition", train_size=3000, val_size=200, digits=2, seed=0)
    config = model_config(2, d_model=64, n_layers=2, n_heads=4)
    tc = TrainingConfig(learning_rate=3e-3, batch_size=64, epochs=12, weight_decay=0.1, warmup_steps=20, checkpoint_dir=str(tmp_path))
    trainer = Trainer(lambda: GPT(config), config, tc)
    results = trainer.train(train, val)
    assert results["metrics_summary"]["val/exact_match"].iloc[-1] > 0.9
    assert solve(trainer.model, 47, 38, digits=2) == 85


@pytest.mark.parametrize(("override", "shown"), [("data.train_size=many", "train_size='many'"), ("data.seed=x", "seed='x'"),
                                                 ("data.digits=0", "digits=0"), ("data.val_size=2.5", "val_size=2.5")])
def test_a_built_in_datasets_parameter_of_the_wrong_type_is_named(override, shown):
    """They ended in "'<' not supported between instances of 'str' and 'int'" and the like."""
    from trainyard.experiment import build, load_spec

    from tests.conftest import ROOT

    with pytest.raises(ValueError, match=rf"^the addition dataset's {re.escape(shown)} must be an integer >= \d \(data\.\w+ in an experiment config\)$"):
        build(load_spec(ROOT / "jobs" / "configs" / "addition.yaml", [override]))
