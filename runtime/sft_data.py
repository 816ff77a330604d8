"""Supervised fine-tuning data: chat-rendered conversations, packed whole, loss on the assistant's tokens only.

- `conversation_tokens(tokenizer, messages)`: the tokens of `runtime.tokenizer.render_chat(messages)`
  (`<|bos|><|user|>Q\n<|assistant|>A<|eos|>`), encoded piece by piece (every piece boundary is a special token, so
  this is exactly the encoding of the whole rendered string), with a mask that is True on the assistant's content
  tokens and its closing `<|eos|>`, False on BOS, role markers and user text.
- `SFTDataset`: conversations in a seeded shuffled order per epoch, shifted within each conversation (labels are the
  next token where that token is an assistant token, else `IGNORE_INDEX` -100, which torchtitan's cross-entropy
  ignores) and packed into rows of `seq_len` with `positions` restarting at 0 per conversation (block-causal document
  masks, as in `runtime.lm_data`). A conversation never straddles two rows: when it does not fit in what is left of
  a row, the row is padded (pad token, label -100, its own position run) and the conversation starts the next row;
  one longer than a row is cut to `seq_len + 1` tokens. Rows `rank, rank + W, ...` go to data-parallel rank `rank`;
  the state (epoch, cursor, row count, the partial row) is checkpointed.
- `SFTDataLoader`: torchtitan's `ParallelAwareDataloader` over it (`SFTDataLoader.Config` for `Trainer.Config`).

Test: `python -m pytest tests/runtime/test_sft.py -q`.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch.distributed.checkpoint.stateful import Stateful
from torch.utils.data import IterableDataset
from torchtitan.components.loss import IGNORE_INDEX

from runtime.lm_data import SourceDataLoader, load_source
from runtime.lm_eval import forward_logits
from runtime.tokenizer import ASSISTANT, BOS, EOS, USER


def special_id(tokenizer: Any, token: str) -> int:
    ids = tokenizer.encode(token, add_bos=False, add_eos=False)
    if len(ids) != 1:
        raise ValueError(f"tokenizer: {token} is not a single special token")
    return ids[0]


def conversation_tokens(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> tuple[list[int], list[bool]]:
    """(tokens, assistant mask) of one chat-rendered conversation."""
    enc = lambda text: tokenizer.encode(text, add_bos=False, add_eos=False)  # noqa: E731
    tokens, mask = enc(BOS), [False]
    for message in messages:
        if message["role"] == "user":
            piece = enc(USER + message["content"] + "\n")
            tokens += piece
            mask += [False] * len(piece)
        elif message["role"] == "assistant":
            marker, content, eos = enc(ASSISTANT), enc(message["content"]), enc(EOS)
            tokens += marker + content + eos
            mask += [False] * len(marker) + [True] * (len(content) + len(eos))
        else:
            raise ValueError(f"unsupported role: {message['role']}")
    return tokens, mask


def shifted_example(tokenizer: Any, messages: Sequence[Mapping[str, str]], seq_len: int) -> tuple[list[int], list[int]]:
    """(inputs, labels) of one conversation cut to seq_len + 1 tokens: labels are the next token where it is an
    assistant token, else IGNORE_INDEX."""
    tokens, mask = conversation_tokens(tokenizer, messages)
    tokens, mask = tokens[:seq_len + 1], mask[:seq_len + 1]
    return tokens[:-1], [t if m else IGNORE_INDEX for t, m in zip(tokens[1:], mask[1:])]


class SFTDataset(IterableDataset, Stateful):
    """Packed conversation rows: yields `({"input", "positions"}, labels)`."""

    def __init__(self, conversations: Sequence[Sequence[Mapping[str, str]]], tokenizer: Any, seq_len: int, *,
                 seed: int = 0, dp_rank: int = 0, dp_world_size: int = 1):
        if not conversations:
            raise ValueError("SFT data: no conversations")
        self.conversations = list(conversations)
        self.tokenizer, self.seq_len, self.seed = tokenizer, seq_len, seed
        self.dp_rank, self.dp_world_size = dp_rank, dp_world_size
        self.pad_id = special_id(tokenizer, "<|pad|>")
        self._epoch, self._cursor, self._row = 0, 0, 0
        self._order_cache: tuple[int, list[int]] | None = None
        self._inputs: list[int] = []
        self._labels: list[int] = []
        self._positions: list[int] = []

    def _order(self) -> list[int]:
        if self._order_cache is None or self._order_cache[0] != self._epoch:
            order = list(range(len(self.conversations)))
            random.Random(f"sft-{self.seed}-{self._epoch}").shuffle(order)
            self._order_cache = (self._epoch, order)
        return self._order_cache[1]

    def next_example(self) -> tuple[list[int], list[int]]:
        """(inputs, labels) of the next conversation (`shifted_example`)."""
        if self._cursor >= len(self.conversations):
            self._epoch, self._cursor = self._epoch + 1, 0
        messages = self.conversations[self._order()[self._cursor]]
        self._cursor += 1
        return shifted_example(self.tokenizer, messages, self.seq_len)

    def _emit(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        n, fill = self.seq_len, self.seq_len - len(self._inputs)
        inputs = self._inputs + [self.pad_id] * fill
        labels = self._labels + [IGNORE_INDEX] * fill
        positions = self._positions + list(range(fill))
        self._inputs, self._labels, self._positions = [], [], []
        return ({"input": torch.tensor(inputs[:n], dtype=torch.long),
                 "positions": torch.tensor(positions[:n], dtype=torch.long)},
                torch.tensor(labels[:n], dtype=torch.long))

    def __iter__(self) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        while True:
            inputs, labels = self.next_example()
            row = None
            if len(self._inputs) + len(inputs) > self.seq_len:
                row = self._emit()
            self._inputs += inputs
            self._labels += labels
            self._positions += list(range(len(inputs)))
            if row is None and len(self._inputs) == self.seq_len:
                row = self._emit()
            if row is not None:
                self._row += 1
                if (self._row - 1) % self.dp_world_size == self.dp_rank:
                    yield row

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self._epoch, "cursor": self._cursor, "row": self._row, "inputs": list(self._inputs),
                "labels": list(self._labels), "positions": list(self._positions)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._epoch, self._cursor, self._row = int(state["epoch"]), int(state["cursor"]), int(state["row"])
        self._inputs, self._labels = list(state["inputs"]), list(state["labels"])
        self._positions = list(state["positions"])


def load_conversations(spec: Mapping[str, Any], split: str | None = None) -> list[list[dict[str, str]]]:
    ds = load_source(spec, split)
    return [list(m) for m in ds[spec.get("text_field") or "messages"]]


class SFTDataLoader(SourceDataLoader):
    """torchtitan dataloader over an `SFTDataset` of the source's conversations."""

    @dataclass(kw_only=True, slots=True)
    class Config(SourceDataLoader.Config):
        pass

    def build_dataset(self, config: Config, *, tokenizer: Any, seq_len: int, dp_rank: int,
                      dp_world_size: int) -> SFTDataset:
        return SFTDataset(load_conversations(config.source), tokenizer, seq_len, seed=config.seed, dp_rank=dp_rank,
                          dp_world_size=dp_world_size)


@torch.no_grad()
def assistant_loss(model: torch.nn.Module, tokenizer: Any, conversations: Sequence[Sequence[Mapping[str, str]]],
                   seq_len: int, *, limit: int = 64, device: torch.device | str = "cpu") -> dict[str, float]:
    """Mean next-token loss on the assistant tokens of the first `limit` conversations, each scored on its own."""
    import torch.nn.functional as F

    was_training = model.training
    model.eval()
    nats, n = 0.0, 0
    for messages in list(conversations)[:limit]:
        inputs, label_list = shifted_example(tokenizer, messages, seq_len)
        labels = torch.tensor(label_list, device=device)
        logits = forward_logits(model, torch.tensor([inputs], device=device)).float()
        nats += float(F.cross_entropy(logits[0], labels.to(logits.device), ignore_index=IGNORE_INDEX,
                                      reduction="sum"))
        n += int((labels != IGNORE_INDEX).sum())
    if was_training:
        model.train()
    return {"loss": nats / n if n else float("nan"), "tokens": n, "docs": min(limit, len(conversations))}
