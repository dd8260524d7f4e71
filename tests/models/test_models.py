from types import SimpleNamespace

import pytest
import torch
from trainyard.models import GPT, GPTConfig, SequenceClassifier, build_model


def test_gpt_returns_logits_and_is_causal():
    model = GPT(SimpleNamespace(vocab_size=20, max_seq_len=16, d_model=32, n_layers=2, n_heads=4)).eval()
    x = torch.randint(0, 20, (2, 10))
    logits = model(x)
    assert logits.shape == (2, 10, 20)
    changed = x.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % 20
    assert torch.allclose(model(changed)[:, :6], logits[:, :6], atol=1e-6)  # the future is not seen


def test_gpt_config_from_dict_with_extra_keys_and_validation():
    assert GPT({"vocab_size": 10, "d_model": 16, "n_heads": 2, "unrelated": 1}).config.d_model == 16
    with pytest.raises(ValueError, match="not divisible by n_heads"):
        GPT(d_model=30, n_heads=4)
    with pytest.raises(TypeError, match="no field"):
        GPT(hidden=3)


def test_gpt_rejects_sequences_longer_than_its_context():
    with pytest.raises(ValueError, match="max_seq_len=8"):
        GPT(vocab_size=10, max_seq_len=8, d_model=16, n_heads=2)(torch.zeros(1, 9, dtype=torch.long))


def test_flops_per_token_counts_weights_and_attention():
    cfg = GPTConfig(vocab_size=100, max_seq_len=64, d_model=64, n_layers=2, n_heads=4)
    n = 12 * 2 * 64**2 + 100 * 64
    assert cfg.flops_per_token() == 6 * n + 12 * 2 * 64 * 64


def test_classifier_ignores_padding():
    model = SequenceClassifier(vocab_size=20, d_model=16, n_heads=2, num_labels=3).eval()
    x = torch.randint(1, 20, (1, 5))
    padded = torch.cat([x, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    mask = torch.tensor([[1] * 5 + [0] * 3])
    a = model(x)["logits"]
    b = model(padded, attention_mask=mask)["logits"]
    assert a.shape == (1, 3) and torch.allclose(a, b, atol=1e-5)


def test_build_model_by_name():
    assert isinstance(build_model("gpt", {"vocab_size": 10, "d_model": 16, "n_heads": 2}), GPT)
    with pytest.raises(ValueError, match="built-in models"):
        build_model("bert")
