"""Tiny models and data shared by the tests: everything trains in well under a second."""

from __future__ import annotations

import torch
from torch import nn

VOCAB = 23


class TinyLM(nn.Module):
    """Embedding -> dropout -> linear: logits (B, T, V). Dropout makes RNG state matter."""

    def __init__(self, vocab: int = VOCAB, dim: int = 16, dropout: float = 0.1):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.drop = nn.Dropout(dropout)
        self.mix = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, vocab)

    def forward(self, input_ids):
        return self.out(torch.tanh(self.mix(self.drop(self.emb(input_ids)))))


class TinyClassifier(nn.Module):
    def __init__(self, vocab: int = VOCAB, dim: int = 8, classes: int = 3):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.out = nn.Linear(dim, classes)

    def forward(self, input_ids):
        return self.out(self.emb(input_ids).mean(1))


class TinyRegressor(nn.Module):
    def __init__(self, features: int = 5):
        super().__init__()
        self.lin = nn.Linear(features, 1)

    def forward(self, x):
        return self.lin(x)


def lm_samples(n: int = 24, length: int = 8, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (length,), generator=g) for _ in range(n)]


def lm_factory(seed: int = 1, dropout: float = 0.1):
    def factory():
        torch.manual_seed(seed)
        return TinyLM(dropout=dropout)

    return factory


def slow_batches(seconds: float):
    """A hook that makes every batch take `seconds` longer: a job that is still running
    when a test acts on it."""
    import time

    from trainyard import TrainingHooks

    class SlowBatches(TrainingHooks):
        def on_batch_end(self, trainer, batch, outputs):
            time.sleep(seconds)

    return SlowBatches()
