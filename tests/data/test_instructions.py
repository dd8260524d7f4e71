"""Instruction and chat data: prompts are masked out of the loss, responses are learned."""

import math

import pytest
import torch
from trainyard.data.instructions import tokenize_instructions
from trainyard.data.tokenizer import CharTokenizer
from trainyard.experiment import build

TOKENIZER = CharTokenizer.bytes()
PAIRS = {"prompt": ["2+2=", "capital of France? "], "response": ["4", "Paris"]}


def test_prompt_tokens_are_masked_and_the_response_ends_with_the_end_token():
    out = tokenize_instructions(PAIRS, TOKENIZER, max_len=None)
    ids, labels = out["input_ids"][0], out["labels"][0]
    prompt = TOKENIZER.encode("2+2=", add_bos=True)
    response = TOKENIZER.encode("4") + [TOKENIZER.eos_token_id]
    assert ids == prompt + response and labels == [-100] * len(prompt) + response
    assert set(out) == {"input_ids", "labels"}


def test_a_conversation_learns_its_last_assistant_message_in_the_role_layout():
    conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                    {"role": "user", "content": "bye"}, {"role": "assistant", "content": "ciao"}]
    out = tokenize_instructions({"messages": [conversation]}, TOKENIZER, max_len=None)
    prompt = TOKENIZER.encode("user: hi\nassistant: hello\nuser: bye\nassistant: ", add_bos=True)
    assert out["labels"][0] == [-100] * len(prompt) + TOKENIZER.encode("ciao") + [TOKENIZER.eos_token_id]
    with pytest.raises(ValueError, match="row 0: the last message is the 'user''s; the response to learn must be the assistant's"):
        tokenize_instructions({"messages": [conversation[:1]]}, TOKENIZER, max_len=None)


def test_a_tokenizers_chat_template_lays_out_the_prompt():
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["[PAD]", "[UNK]", "[EOS]", "USER", "BOT", *"hi hello bye".split()]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")
    tok.chat_template = "{% for m in messages %}{{ 'USER' if m['role'] == 'user' else 'BOT' }} {{ m['content'] }} {% endfor %}" \
                        "{% if add_generation_prompt %}BOT {% endif %}"
    out = tokenize_instructions({"messages": [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]]}, tok, None)
    user, bot, hi, hello, eos = (words.index(w) for w in ("USER", "BOT", "hi", "hello", "[EOS]"))
    assert out["input_ids"][0] == [user, hi, bot, hello, eos] and out["labels"][0] == [-100, -100, -100, hello, eos]


def test_a_prompt_that_fills_the_context_is_refused_naming_the_row():
    with pytest.raises(ValueError, match="row 1: its prompt fills the model's context \\(8 tokens\\)"):
        tokenize_instructions(PAIRS, TOKENIZER, max_len=8)


def test_only_response_tokens_make_the_loss():
    """The loss a run reports equals cross-entropy over the response tokens alone."""
    spec = {"model": {"name": "gpt", "d_model": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": 32},
            "training": {"epochs": 1, "batch_size": 2, "random_seed": 1}}
    exp = build(spec, dataset=(PAIRS, PAIRS))
    trainer = exp.trainer()
    results = trainer.train(exp.train_data, exp.val_data)
    model = trainer.model.eval()  # as it was when the last epoch's val/loss was measured
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, labels in zip(exp.val_data["input_ids"], exp.val_data["labels"]):
            logits = model(torch.tensor([ids]))[0]
            targets = torch.tensor(labels[1:])
            keep = targets != -100
            total += float(torch.nn.functional.cross_entropy(logits[:-1][keep], targets[keep], reduction="sum"))
            count += int(keep.sum())
    assert count == sum(len(r) + 1 for r in PAIRS["response"])  # each response and its end token, nothing of the prompts
    assert math.isclose(results["metrics_summary"]["val/loss"].iloc[-1], total / count, rel_tol=1e-5)
