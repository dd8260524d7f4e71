"""The seed's `MyTransformerModel` / `MyModel`: the user's own model (importable by Ray)."""

import torch
from torch import nn


class MyTransformerModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.emb = nn.Embedding(config.vocab_size, 16)
        self.out = nn.Linear(16, config.vocab_size)

    def forward(self, input_ids):
        return self.out(torch.relu(self.emb(input_ids)))


MyModel = MyTransformerModel
