"""Rows of a generation job's prompt set, as chat messages, with their reference answers; and the text of any
training record, for deduplication and decontamination."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "system": "system"}


def load_rows(job: Mapping[str, Any], ref: Mapping[str, Any], limit: int | None = None) -> list[dict[str, Any]]:
    """The first `limit` rows (all when None) of a recipe data reference, local paths resolved."""
    from runtime.lm_data import load_source, resolve_path

    spec = dict(ref)
    if spec.get("path"):
        spec["path"] = resolve_path(job, spec["path"])
    ds = load_source(spec)
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return [dict(r) for r in ds]


def prompt_set(job: Mapping[str, Any], block: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[list[dict[str, str]]]]:
    """(rows, their prompts as chat messages) of a generation block: the first `num_prompts` rows of `prompts`."""
    rows = load_rows(job, block["prompts"], block.get("num_prompts"))
    return rows, [prompt_messages(r, block["prompts"].get("text_field") or "prompt") for r in rows]


def _message(m: Mapping[str, Any]) -> dict[str, str]:
    role = ROLES.get(str(m.get("role", m.get("from", ""))).lower())
    if role is None:
        raise ValueError(f"a message with an unknown role: {dict(m)}")
    return {"role": role, "content": str(m.get("content", m.get("value", "")))}


def prompt_messages(row: Mapping[str, Any], field: str) -> list[dict[str, str]]:
    """The conversation to answer: a string field is one user turn; a message list is cut before its first
    assistant turn (a dataset that already holds responses, e.g. ShareGPT-style `conversations`)."""
    if field not in row:
        raise ValueError(f"prompt rows have no field {field!r} (they have: {', '.join(sorted(row))})")
    value = row[field]
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, list) and value:
        messages = [_message(m) for m in value]
        first_reply = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), len(messages))
        if first_reply and messages[first_reply - 1]["role"] == "user":
            return messages[:first_reply]
    raise ValueError(f"prompt field {field!r} is neither a string nor messages ending in a user turn: {str(value)[:120]}")


def record_texts(value: Any) -> list[str]:
    """The strings inside a record field: a string, a list of messages (their contents) or of strings."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return record_texts(value.get("content", value.get("value")))
    if isinstance(value, Sequence):
        return [text for item in value for text in record_texts(item)]
    return [str(value)]


VALIDATION_EVERY = 20  # every 20th record of a generated set is held out (5%), when there are at least 20


def write_splits(folder: Path, records: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """A generated data set as `folder/train.jsonl` and `folder/validation.jsonl` (the layout every loader reads; the
    training jobs report held-out loss or reward accuracy on the validation split). Each file written atomically."""
    from runtime.outputs import atomic_write_text

    held_out = len(records) >= VALIDATION_EVERY
    splits: dict[str, list[str]] = {"train": [], "validation": []}
    for i, record in enumerate(records):
        split = "validation" if held_out and i % VALIDATION_EVERY == VALIDATION_EVERY - 1 else "train"
        splits[split].append(json.dumps(record, ensure_ascii=False) + "\n")
    folder.mkdir(parents=True, exist_ok=True)
    for split, lines in splits.items():
        if lines or split == "train":
            atomic_write_text(folder / f"{split}.jsonl", "".join(lines))
    return {split: len(lines) for split, lines in splits.items()}
