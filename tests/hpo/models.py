"""Model factories for sweep tests (module level: Ray's processes import them)."""

import torch
from trainyard.models import GPT


def gpt_or_nan(model_config):
    """A GPT, or (when model.explode is 1) one whose logits are NaN: that trial must fail."""
    model = GPT(model_config)
    if model_config.get("explode"):
        model.forward = lambda input_ids, _f=model.forward: _f(input_ids) * float("nan")
    return model


def tiny_gpt(model_config):
    torch.manual_seed(0)
    return GPT(model_config)


def gpt_failing_once(model_config):
    """Raises once, in epoch 2 (after epoch 1's checkpoint); a marker file makes it once."""
    from pathlib import Path

    marker = Path(model_config["marker"])
    model = tiny_gpt(model_config)
    if marker.exists():
        return model
    calls = {"n": 0}
    forward = model.forward

    def flaky(input_ids):
        calls["n"] += 1
        if calls["n"] == 12:  # epoch 1 is 8 train + 1 eval batches: this is in epoch 2
            marker.write_text("failed once")
            raise RuntimeError("transient failure in epoch 2")
        return forward(input_ids)

    model.forward = flaky
    return model
