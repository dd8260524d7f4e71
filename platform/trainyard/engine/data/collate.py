"""Collator: samples -> one batch, padding 1-D sequences to the longest one."""

from __future__ import annotations

import torch

PAD_VALUES = {"attention_mask": 0, "labels": -100}  # what padding holds, by key (input_ids: the pad token)


class Collator:
    """Stacks samples into a batch, padding 1-D sequences to the longest one."""

    def __init__(self, pad_token_id: int | None):
        self.pad_token_id = pad_token_id

    def __call__(self, samples: list[dict[str, torch.Tensor]] | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if isinstance(samples, dict):  # already batched by ColumnDataset.__getitems__
            return samples
        keys = samples[0].keys()
        lengths = [s["input_ids"].shape[0] if s["input_ids"].dim() else 1 for s in samples]
        if len(set(lengths)) == 1 or samples[0]["input_ids"].dim() != 1:
            return {k: torch.stack([s[k] for s in samples]) for k in keys}
        if self.pad_token_id is None:
            raise ValueError(
                f"sequences have different lengths ({min(lengths)} to {max(lengths)} tokens), so the batch "
                "needs padding, but no pad_token_id is known: set config.pad_token_id = 0 (your model "
                "config) or pass TaskSpec(..., preprocessing_config={'pad_token_id': 0})"
            )
        batch = {k: _pad([s[k] for s in samples], self.pad_token_id if k == "input_ids" else PAD_VALUES[k]) for k in keys}
        if "attention_mask" not in batch:
            batch["attention_mask"] = _pad([torch.ones(n, dtype=torch.int64) for n in lengths], 0)
        return batch


def _pad(seqs: list[torch.Tensor], value: int) -> torch.Tensor:
    if seqs[0].dim() != 1:
        return torch.stack(seqs)
    return torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=value)
