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
        self.byte_level = False
        # What the model's text means, for the export bundle to check and say: the prompts it
        # was trained on (a regular expression) and how to read its answers.
        self.prompt_pattern: str | None = None
        self.usage: str | None = None

    def __call__(self, text: str, max_length: int | None = None, truncation: bool = True) -> dict[str, list[int]]:
        """`{"input_ids": [...]}` of one text with <bos>/<eos>, cut at `max_length`: the call
        shape of a Hugging Face tokenizer, so code that tokenizes takes either."""
        ids = self.encode(text, add_bos=True, add_eos=True)
        return {"input_ids": ids[:max_length] if max_length and truncation else ids}

    def to_spec(self) -> dict:
        """What an export bundle's inference.py rebuilds this tokenizer from (tokenizer.json)."""
        return {"itos": list(self.itos), "byte_level": self.byte_level, "bos_token_id": self.bos_token_id,
                "eos_token_id": self.eos_token_id, "n_special": 3, "prompt_pattern": self.prompt_pattern, "usage": self.usage}

    @classmethod
    def bytes(cls) -> "CharTokenizer":
        """Every byte value: encodes any text as its UTF-8 bytes."""
        tokenizer = cls(chr(i) for i in range(256))
        tokenizer.byte_level = True
        return tokenizer

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
        if self.byte_level:
            text = text.encode("utf-8").decode("latin-1")  # one character per byte
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
        text = "".join(out)
        return text.encode("latin-1").decode("utf-8", errors="replace") if self.byte_level else text
