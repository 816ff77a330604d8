"""Answer accuracy by greedy decoding: the toy world's held-out arithmetic, for base and chat models alike.

- `exact_match(model, tokenizer, rows, max_len, chat=...)`: greedy-decode each row (chat: the `question` as a user
  turn with the generation prompt, `runtime.sft_data`'s template; base: `<bos>` + the raw `prompt`, the
  pretraining format), up to `<|eos|>` or `max_new_tokens`; a hit when the text after the last `Answer:` (or the
  whole reply) equals `answer`. No KV cache: each new token is a full forward, fine for the tiny model's short
  answers; vLLM does real generation (RLVR, data generation, lm-eval).
- `toy_arith_rows(paths)`: the toy world's held-out `eval/arith.jsonl`, found beside any of a job's local data
  folders (`<world>/<set>/` -> `<world>/eval/arith.jsonl`); [] elsewhere. A stop-gap until the recipe's `evals`
  block names eval sets explicitly.

Test: `python -m pytest tests/runtime/test_sft.py -q`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

from runtime.answers import answer_of
from runtime.lm_eval import forward_logits
from runtime.sft_data import conversation_tokens, special_id
from runtime.tokenizer import ASSISTANT, EOS

EVAL_QUESTIONS = 32


def prompt_tokens(tokenizer: Any, row: Mapping[str, str], *, chat: bool) -> list[int]:
    if chat:
        tokens, _ = conversation_tokens(tokenizer, [{"role": "user", "content": row["question"]}])
        return tokens + tokenizer.encode(ASSISTANT, add_bos=False, add_eos=False)
    return tokenizer.encode(row["prompt"], add_bos=True, add_eos=False)


@torch.no_grad()
def exact_match(model: torch.nn.Module, tokenizer: Any, rows: Sequence[Mapping[str, str]], max_len: int, *,
                chat: bool = True, max_new_tokens: int = 128,
                device: torch.device | str = "cpu") -> dict[str, Any]:
    """{"accuracy", "n", "examples"} of greedy answers to `rows` (see the module docstring)."""
    was_training = model.training
    model.eval()
    eos = special_id(tokenizer, EOS)
    replies = []
    for row in rows:
        tokens = prompt_tokens(tokenizer, row, chat=chat)
        start = len(tokens)
        while len(tokens) < min(max_len, start + max_new_tokens):
            logits = forward_logits(model, torch.tensor([tokens], device=device))
            nxt = int(logits[0, -1].argmax())
            if nxt == eos:
                break
            tokens.append(nxt)
        replies.append(tokenizer.decode(tokens[start:]))
    if was_training:
        model.train()
    return score_replies(rows, replies)


def score_replies(rows: Sequence[Mapping[str, str]], replies: Sequence[str]) -> dict[str, Any]:
    """{"accuracy", "n", "examples"}: a hit when the reply's answer equals the row's `answer`."""
    hits, examples = 0, []
    for row, reply in zip(rows, replies, strict=True):
        hit = answer_of(reply) == str(row["answer"]).strip()
        hits += hit
        if len(examples) < 3:
            examples.append({"question": row["question"], "reply": reply, "answer": row["answer"], "hit": hit})
    return {"accuracy": hits / len(rows) if rows else float("nan"), "n": len(rows), "examples": examples}


def toy_arith_rows(paths: Iterable[str | Path], limit: int = EVAL_QUESTIONS) -> list[dict[str, str]]:
    """The first `limit` rows of the toy world's held-out arithmetic beside one of `paths` (local data folders)."""
    for path in paths:
        candidate = Path(path).parent / "eval" / "arith.jsonl"
        if Path(path).is_dir() and candidate.is_file():
            lines = candidate.read_text(encoding="utf-8").splitlines()
            return [json.loads(line) for line in lines if line.strip()][:limit]
    return []
