"""Instruction and chat data: the loss is on the response only.

    columns = tokenize_instructions({"prompt": [...], "response": [...]}, tokenizer, max_len)
    columns = tokenize_instructions({"messages": [[{"role": "user", "content": ...}, ...], ...]}, tokenizer, max_len)

Each row becomes `input_ids` (prompt, then response and the end token) and `labels`: -100
over the prompt, so only response tokens are targets, counted by the loss exactly as any
labelled tokens are. A conversation's response is its last message, which must be the
assistant's; the tokenizer's chat template lays the conversation out where it has one,
else `role: content` lines. Rows are padded per batch; files of such rows may also be packed
(`pack_rows`), as Ray Data reads them (`trainyard.execution.ingest`).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

IGNORE = -100
INSTRUCTION_COLUMNS = (("prompt", "response"), ("messages",))


def is_instruction_data(data: Any) -> bool:
    """Columns of prompt/response pairs or of conversations, not tokenized yet."""
    if not isinstance(data, Mapping) or "input_ids" in data:
        return False
    return ("prompt" in data and "response" in data) or "messages" in data


def tokenize_instructions(data: Mapping[str, Any], tokenizer: Any, max_len: int | None) -> dict[str, Any]:
    """`input_ids` and `labels` (the prompt masked) of every row, cut at `max_len`; the other
    columns are kept as they are."""
    if "messages" in data:
        pairs = [_conversation(row, i, tokenizer) for i, row in enumerate(data["messages"])]
        used = ("messages",)
    else:
        pairs = list(zip(data["prompt"], data["response"]))
        used = ("prompt", "response")
    input_ids, labels = [], []
    for i, (prompt, response) in enumerate(pairs):
        prompt_ids = prompt if isinstance(prompt, list) else _encode(tokenizer, _text(prompt, "prompt", i), first=True)
        response_ids = _encode(tokenizer, _text(response, "response", i), first=False) + _end(tokenizer)
        ids, targets = (prompt_ids + response_ids), [IGNORE] * len(prompt_ids) + response_ids
        if max_len:
            ids, targets = ids[:max_len], targets[:max_len]
        if all(t == IGNORE for t in targets):
            raise ValueError(
                f"row {i}: its prompt fills the model's context ({max_len} tokens), so no response token is left to learn: "
                "shorten the prompt, or use a model with a longer context (max_seq_len)"
            )
        input_ids.append(ids)
        labels.append(targets)
    return {"input_ids": input_ids, "labels": labels, **{k: v for k, v in data.items() if k not in used}}


def has_instruction_columns(columns: Sequence[str]) -> bool:
    """Whether a table with these columns holds instruction or chat rows (not tokenized yet)."""
    return "input_ids" not in columns and any(set(group) <= set(columns) for group in INSTRUCTION_COLUMNS)


def pack_rows(input_ids: list[list[int]], labels: list[list[int]], seq_len: int) -> tuple[list[list[int]], list[list[int]]]:
    """The rows concatenated and cut into `seq_len` blocks, the labels alongside (the last
    partial block is dropped). A block may start inside a row; a row's first label is its
    prompt's, -100, so no token is learnt across two rows."""
    ids = [i for row in input_ids for i in row]
    targets = [t for row in labels for t in row]
    blocks = len(ids) // seq_len
    return ([ids[b * seq_len : (b + 1) * seq_len] for b in range(blocks)], [targets[b * seq_len : (b + 1) * seq_len] for b in range(blocks)])


def _text(value: Any, column: str, row: int) -> str:
    if not isinstance(value, str):
        raise TypeError(f"row {row}: the {column!r} column must hold strings, got {type(value).__name__}")
    return value


def _conversation(messages: Any, row: int, tokenizer: Any) -> tuple[list[int] | str, str]:
    """(the prompt, as token ids from the chat template or as text; the last message's text)."""
    if not isinstance(messages, Sequence) or not messages or not all(isinstance(m, Mapping) and {"role", "content"} <= set(m) for m in messages):
        raise ValueError(f"row {row}: 'messages' must be a list of {{role, content}} mappings, e.g. [{{'role': 'user', 'content': 'Hi'}}, ...]")
    if messages[-1]["role"] != "assistant":
        raise ValueError(f"row {row}: the last message is the {messages[-1]['role']!r}'s; the response to learn must be the assistant's")
    history, response = list(messages[:-1]), messages[-1]["content"]
    if getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template(history, add_generation_prompt=True, tokenize=True)
        return list(prompt["input_ids"] if isinstance(prompt, Mapping) else prompt), response
    return "".join(f"{m['role']}: {m['content']}\n" for m in history) + "assistant: ", response


def _encode(tokenizer: Any, text: str, first: bool) -> list[int]:
    """Token ids of `text`; the start token only before the prompt."""
    if hasattr(tokenizer, "encode") and hasattr(tokenizer, "itos"):  # trainyard's character tokenizer
        return tokenizer.encode(text, add_bos=first)
    return list(tokenizer(text, add_special_tokens=first)["input_ids"])


def _end(tokenizer: Any) -> list[int]:
    eos = getattr(tokenizer, "eos_token_id", None)
    return [eos] if eos is not None else []
