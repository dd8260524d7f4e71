"""A small GPT: token + position embeddings, pre-norm causal self-attention blocks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainyard.models._config import check_positive_ints, config_fields

# Named configurations. gpt2-small is the model the field compares training speed on: 124M
# parameters, vocabulary padded from 50257 to 50304 (a multiple of 64, for fast matmuls).
PRESETS: dict[str, dict[str, Any]] = {
    "gpt2-small": {"vocab_size": 50304, "max_seq_len": 1024, "d_model": 768, "n_layers": 12, "n_heads": 12, "dropout": 0.0},
}


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 256
    max_seq_len: int = 128
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    dropout: float = 0.0
    pad_token_id: int | None = None
    preset: str | None = None  # informational: which PRESETS entry the fields came from

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "GPTConfig":
        """`GPTConfig.from_preset("gpt2-small", vocab_size=257)`: a preset, some fields changed."""
        if name not in PRESETS:
            raise ValueError(f"unknown GPT preset {name!r}: presets are {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides, "preset": name})

    def __post_init__(self) -> None:
        check_positive_ints(self, ("vocab_size", "max_seq_len", "d_model", "n_layers", "n_heads"))
        if self.d_model % self.n_heads:
            raise ValueError(
                f"GPTConfig.d_model={self.d_model} is not divisible by n_heads={self.n_heads}: choose d_model a multiple of n_heads"
            )
        if not 0 <= self.dropout < 1:
            raise ValueError(f"GPTConfig.dropout={self.dropout!r} is invalid: must be in [0, 1)")

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token: 6N for the weights plus attention (PaLM appendix B)."""
        seq_len = seq_len or self.max_seq_len
        n = 12 * self.n_layers * self.d_model**2 + self.vocab_size * self.d_model
        return 6 * n + 12 * self.n_layers * self.d_model * seq_len


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, 4 * cfg.d_model), nn.GELU(), nn.Linear(4 * cfg.d_model, cfg.d_model))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x)))
        return x + self.drop(self.mlp(self.ln2(x)))


class GPT(nn.Module):
    """`GPT(config)` with any config carrying GPTConfig's fields; returns logits (B, T, V)."""

    def __init__(self, config: Any = None, **overrides: Any):
        super().__init__()
        fields = config_fields(GPTConfig, config, overrides)
        # A preset fills in what the config does not set; the config's own fields win.
        cfg = GPTConfig.from_preset(fields.pop("preset"), **fields) if fields.get("preset") else GPTConfig(**fields)
        self.config = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.max_seq_len, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.head.weight = self.tok.weight  # weight tying
        self.apply(_init_weights)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layers))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1]
        if t > self.config.max_seq_len:
            raise ValueError(f"sequence of {t} tokens is longer than max_seq_len={self.config.max_seq_len}")
        pos = torch.arange(t, device=input_ids.device)
        x = self.drop(self.tok(input_ids) + self.pos(pos))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward), for MFU: see GPTConfig."""
        return self.config.flops_per_token(seq_len)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Greedy decoding."""
        was_training = self.training
        self.eval()
        for _ in range(max_new_tokens):
            logits = self(input_ids[:, -self.config.max_seq_len :])
            input_ids = torch.cat([input_ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        self.train(was_training)
        return input_ids


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
