"""Multi-digit addition as a character language-modelling task, generated locally.

A sample reads `<bos>042+379=124<eos>`: zero-padded operands, then the sum written
*least-significant digit first* (421 reversed), which lets a left-to-right model carry as
it goes. Only the answer is scored (`labels` are -100 over the prompt), so validation
exact-match accuracy is the share of sums a model gets entirely right by greedy decoding.
All samples have one length: no padding is needed.
"""

from __future__ import annotations

import random
from typing import Any

import torch

from trainyard.data.tokenizer import CharTokenizer

TOKENIZER = CharTokenizer("0123456789+=")


def seq_len(digits: int) -> int:
    return 1 + digits + 1 + digits + 1 + (digits + 1) + 1


def make_addition_dataset(n: int, digits: int = 3, seed: int = 0, exclude: set[tuple[int, int]] | None = None) -> dict[str, torch.Tensor]:
    """`n` distinct problems as columns {input_ids, labels} (int64, shape (n, seq_len))."""
    if n < 1 or digits < 1:
        raise ValueError(f"need n >= 1 and digits >= 1, got n={n}, digits={digits}")
    space = (10**digits) ** 2
    exclude = exclude or set()
    if n > space - len(exclude):
        raise ValueError(f"only {space - len(exclude)} distinct {digits}-digit problems are available, asked for {n}")
    rng = random.Random(seed)
    pairs: list[tuple[int, int]] = []
    seen = set(exclude)
    while len(pairs) < n:
        pair = (rng.randrange(10**digits), rng.randrange(10**digits))
        if pair not in seen:
            seen.add(pair)
            pairs.append(pair)
    input_ids, labels = [], []
    prompt_len = 1 + 2 * digits + 2
    for a, b in pairs:
        text = f"{a:0{digits}d}+{b:0{digits}d}=" + f"{a + b:0{digits + 1}d}"[::-1]
        ids = TOKENIZER.encode(text, add_bos=True, add_eos=True)
        input_ids.append(ids)
        labels.append([-100] * prompt_len + ids[prompt_len:])
    return {"input_ids": torch.tensor(input_ids), "labels": torch.tensor(labels)}


def addition_splits(train_size: int, val_size: int, digits: int = 3, seed: int = 0) -> tuple[dict, dict]:
    """Train and validation sets with no problem in common."""
    for name, value, low in (("train_size", train_size, 1), ("val_size", val_size, 1), ("digits", digits, 1), ("seed", seed, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"the addition dataset's {name}={value!r} must be an integer >= {low} (data.{name} in an experiment config)")
    val = make_addition_dataset(val_size, digits, seed=seed + 1)
    held_out = {_pair(row, digits) for row in val["input_ids"].tolist()}
    return make_addition_dataset(train_size, digits, seed=seed, exclude=held_out), val


def tokenizer(digits: int = 3) -> CharTokenizer:
    """The addition tokenizer, saying what its prompts and answers look like (the export
    bundle checks a prompt against it and prints how to read the answer)."""
    described = CharTokenizer("0123456789+=")
    n = digits
    described.prompt_pattern = rf"\d{{{n}}}\+\d{{{n}}}="
    example_a, example_b = 10**n // 3, 10**n // 2  # 333+500=833 for 3 digits
    total = f"{example_a + example_b:0{n + 1}d}"
    described.usage = (
        f"prompts are two {n}-digit numbers, zero-padded ({'7'.zfill(n)}+{'8'.zfill(n)}= for 7+8); the answer is the sum's "
        f"{n + 1} digits least-significant first: {example_a:0{n}d}+{example_b:0{n}d}= answers {total[::-1]}, which reversed is {total}"
    )
    return described


def model_config(digits: int = 3, **overrides: Any) -> dict[str, Any]:
    """Model config entries this dataset needs."""
    return {"vocab_size": TOKENIZER.vocab_size, "max_seq_len": seq_len(digits), "pad_token_id": TOKENIZER.pad_token_id, **overrides}


def solve(model: torch.nn.Module, a: int, b: int, digits: int = 3) -> int:
    """Ask a trained model for a + b by greedy decoding."""
    prompt = torch.tensor([TOKENIZER.encode(f"{a:0{digits}d}+{b:0{digits}d}=", add_bos=True)])
    out = model.generate(prompt, digits + 1)[0, prompt.shape[1] :]
    return int(TOKENIZER.decode(out)[::-1] or 0)


def _pair(ids: list[int], digits: int) -> tuple[int, int]:
    text = TOKENIZER.decode(ids)
    a, rest = text.split("+")
    return int(a), int(rest.split("=")[0])
