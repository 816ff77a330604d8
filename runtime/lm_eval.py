"""Held-out evaluation of a language model: per-source loss (nats/token) and bits per byte.

`evaluate_texts(model, tokenizer, texts, seq_len)` scores each document on its own (`<bos> text <eos>`, cut into
`seq_len` chunks, right-padded in batches; padding is ignored): loss = summed next-token nats / predicted tokens,
bpb = loss × tokens / utf-8 bytes / ln 2 (= summed nats / bytes / ln 2). The model must accept `model(tokens)` as
causal attention (our CPU `DenseMaskAttention`) or take `attention_masks` built from `positions` (FlexAttention);
both are handled. Under FSDP every rank must call it with the same texts (the forward passes are collective).

Test: `python -m pytest tests/runtime/test_train.py -q -k bpb`.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torchtitan.components.loss import IGNORE_INDEX



def _chunks(tokenizer: Any, texts: Sequence[str], seq_len: int) -> list[list[int]]:
    out = []
    for text in texts:
        tokens = tokenizer.encode(text, add_bos=True, add_eos=True)
        for start in range(0, max(len(tokens) - 1, 1), seq_len):
            piece = tokens[start:start + seq_len + 1]
            if len(piece) >= 2:
                out.append(piece)
    return out


def forward_logits(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Logits of `tokens` (one causal sequence per row), gathered into a plain tensor when sharded."""
    from runtime.model_factory import DenseMaskAttention

    inner = getattr(getattr(model.config, "first_attention", None), "inner_attention", None)
    if inner is None or isinstance(inner, DenseMaskAttention.Config):
        logits = model(tokens)
    else:
        positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
        logits = model(tokens, positions=positions, attention_masks=model.get_attention_masks(positions=positions))
    return logits.full_tensor() if hasattr(logits, "full_tensor") else logits


@torch.no_grad()
def evaluate_texts(model: torch.nn.Module, tokenizer: Any, texts: Sequence[str], seq_len: int, *,
                   batch_size: int = 8, device: torch.device | str = "cpu") -> dict[str, float]:
    """{"loss", "bpb", "tokens", "bytes", "docs"} for `texts` (loss/bpb NaN when there is nothing to score)."""
    was_training = model.training
    model.eval()
    chunks = _chunks(tokenizer, texts, seq_len)
    nats, n_tokens = 0.0, 0
    for i in range(0, len(chunks), batch_size):
        batch = chunks[i:i + batch_size]
        width = max(len(c) for c in batch) - 1
        inputs = torch.zeros(len(batch), width, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        for row, c in enumerate(batch):
            inputs[row, :len(c) - 1] = torch.tensor(c[:-1])
            labels[row, :len(c) - 1] = torch.tensor(c[1:])
        logits = forward_logits(model, inputs.to(device)).float()
        labels = labels.to(logits.device)
        nats += float(F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"))
        n_tokens += int((labels != IGNORE_INDEX).sum())
    if was_training:
        model.train()
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    loss = nats / n_tokens if n_tokens else math.nan
    bpb = nats / n_bytes / math.log(2) if n_bytes else math.nan
    return {"loss": loss, "bpb": bpb, "tokens": n_tokens, "bytes": n_bytes, "docs": len(texts)}
