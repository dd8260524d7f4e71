"""A small sequence classifier: a bidirectional transformer encoder, mean-pooled."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from trainyard.models._config import check_positive_ints, config_fields


@dataclass(frozen=True)
class ClassifierConfig:
    vocab_size: int = 256
    max_seq_len: int = 128
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    num_labels: int = 2
    dropout: float = 0.0
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        check_positive_ints(self, ("vocab_size", "max_seq_len", "d_model", "n_layers", "n_heads", "num_labels"))
        if self.d_model % self.n_heads:
            raise ValueError(f"ClassifierConfig.d_model={self.d_model} is not divisible by n_heads={self.n_heads}")


class SequenceClassifier(nn.Module):
    """Returns {"logits": (B, num_labels)}; padding (attention_mask == 0) is not attended to."""

    def __init__(self, config: Any = None, **overrides: Any):
        super().__init__()
        cfg = ClassifierConfig(**config_fields(ClassifierConfig, config, overrides))
        self.config = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.max_seq_len, cfg.d_model)
        layer = nn.TransformerEncoderLayer(
            cfg.d_model, cfg.n_heads, 4 * cfg.d_model, cfg.dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.tok(input_ids) + self.pos(pos)
        x = self.norm(self.encoder(x, src_key_padding_mask=attention_mask == 0))
        mask = attention_mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * mask).sum(1) / mask.sum(1).clamp(min=1)
        return {"logits": self.head(pooled)}
