"""A character tokenizer with pad / bos / eos specials (ids 0, 1, 2)."""

from __future__ import annotations

from typing import Iterable

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"


class CharTokenizer:
    def __init__(self, alphabet: Iterable[str]):
        chars = list(dict.fromkeys(alphabet))
        if any(len(c) != 1 for c in chars):
            raise ValueError("CharTokenizer alphabet must be single characters")
        self.itos = [PAD, BOS, EOS, *chars]
        self.stoi = {s: i for i, s in enumerate(self.itos)}

    @classmethod
    def bytes(cls) -> "CharTokenizer":
        """Every byte value: encodes any text as UTF-8."""
        return cls(chr(i) for i in range(256))

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    @property
    def pad_token_id(self) -> int:
        return 0

    @property
    def bos_token_id(self) -> int:
        return 1

    @property
    def eos_token_id(self) -> int:
        return 2

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        try:
            ids = [self.stoi[c] for c in text]
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in this tokenizer's alphabet") from None
        return ([self.bos_token_id] if add_bos else []) + ids + ([self.eos_token_id] if add_eos else [])

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        out = []
        for i in ids:
            i = int(i)
            if skip_special and i < 3:
                continue
            out.append(self.itos[i])
        return "".join(out)
