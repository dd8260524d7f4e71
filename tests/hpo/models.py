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
