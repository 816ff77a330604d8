"""Direct preference optimisation through torchtitan's Trainer: pairs, frozen-reference log-probs, the DPO losses.

- Pairs: records `{"prompt", "chosen", "rejected"}` with string responses (the toy world's `pairs` set, the delta
  job's `pairs/`), or `chosen`/`rejected` as chat message lists (the Hugging Face preference layout, prompt
  included in both). Each side is the chat-rendered conversation of `runtime.sft_data` (loss and log-probs on the
  assistant's tokens only), cut to `seq_len + 1` tokens.
- Reference log-probs: the summed log-prob of each side under the frozen `from` model, computed once when the
  trainer is built, from the initial weights (which are the `from` model: the policy starts there) and before a
  checkpoint of this job is restored, so a resumed job gets the same numbers. Data-parallel ranks score disjoint
  shares and sum them (one all-reduce).
- Losses (Rafailov et al. 2023; the length-normalised variant of Tulu 3, `dpo_norm`): with
  `r = beta * (log pi(y|x) - log pi_ref(y|x))` (`dpo_norm`: both log-probs divided by the response's token count),
  `loss = -log sigmoid(r_chosen - r_rejected)`, averaged over the step's pairs.
  Metrics: reward accuracy (share of pairs with `r_chosen > r_rejected`), margin (mean `r_chosen - r_rejected`),
  mean chosen and rejected rewards.
- Batches: `micro_batch_size` pairs per micro-batch, each forward runs `2 * micro_batch_size` rows (chosen,
  rejected interleaved, right-padded, one sequence per row); `global_batch_sequences` pairs per optimizer step.

Entry `runtime.train:run_dpo`. Test: `python -m pytest tests/runtime/test_dpo.py -q`.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch.distributed.checkpoint.stateful import Stateful
from torch.utils.data import IterableDataset
from torchtitan.components.loss import IGNORE_INDEX

from runtime.lm_data import SourceDataLoader, load_source
from runtime.lm_eval import forward_logits
from runtime.lm_trainer import RecipeTrainer
from runtime.sft_data import shifted_example, special_id
from runtime.tokenizer import PAD

Example = tuple[list[int], list[int]]  # (inputs, labels) of one side
Pair = tuple[Example, Example]  # (chosen, rejected)
LOSS_KINDS = ("dpo", "dpo_norm")


# --------------------------------------------------------------------------- pairs

def pair_conversations(record: Mapping[str, Any]) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(chosen, rejected) conversations of one preference record."""
    sides = []
    for key in ("chosen", "rejected"):
        value = record.get(key)
        if isinstance(value, str):
            prompt = record.get("prompt")
            if not isinstance(prompt, str):
                raise ValueError(f"preference record: string {key!r} needs a string 'prompt' (keys: {sorted(record)})")
            sides.append([{"role": "user", "content": prompt}, {"role": "assistant", "content": value}])
        elif isinstance(value, list) and value:
            prompt = record.get("prompt")
            prefix = prompt if isinstance(prompt, list) and value[0].get("role") != "user" else []
            sides.append([dict(m) for m in prefix] + [dict(m) for m in value])
        else:
            raise ValueError(f"preference record: {key!r} must be a string or a list of messages "
                             f"(keys: {sorted(record)})")
    return sides[0], sides[1]


def tokenize_pairs(tokenizer: Any, records: Sequence[Mapping[str, Any]], seq_len: int) -> list[Pair]:
    pairs = []
    for record in records:
        chosen, rejected = pair_conversations(record)
        pairs.append((shifted_example(tokenizer, chosen, seq_len), shifted_example(tokenizer, rejected, seq_len)))
    return pairs


def load_pairs(source: Mapping[str, Any], split: str | None = None) -> list[dict[str, Any]]:
    return [dict(r) for r in load_source(source, split)]


def padded_rows(examples: Sequence[Example], seq_len: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor,
                                                                                 torch.Tensor]:
    """(inputs, positions, labels), each (len(examples), seq_len): right-padded, padding ignored."""
    n = len(examples)
    inputs = torch.full((n, seq_len), pad_id, dtype=torch.long)
    labels = torch.full((n, seq_len), IGNORE_INDEX, dtype=torch.long)
    for row, (ids, labs) in enumerate(examples):
        inputs[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        labels[row, :len(labs)] = torch.tensor(labs, dtype=torch.long)
    positions = torch.arange(seq_len, dtype=torch.long).expand(n, seq_len).clone()
    return inputs, positions, labels


# --------------------------------------------------------------------------- log-probs and the loss

def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-prob of the labelled tokens, their count) per row; logits (N, L, V), labels (N, L)."""
    nll = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX,
                          reduction="none").view(labels.shape)
    return -nll.sum(-1), (labels != IGNORE_INDEX).sum(-1)


def dpo_loss(policy: torch.Tensor, reference: torch.Tensor, lengths: torch.Tensor, *, beta: float,
             kind: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-pair loss, chosen reward, rejected reward); policy/reference: summed log-probs (B, 2) [chosen,
    rejected], lengths: response tokens (B, 2)."""
    if kind not in LOSS_KINDS:
        raise ValueError(f"dpo loss {kind!r}: expected one of {LOSS_KINDS}")
    delta = policy - reference
    if kind == "dpo_norm":
        delta = delta / lengths.clamp(min=1).to(delta.dtype)
    rewards = beta * delta
    return -F.logsigmoid(rewards[:, 0] - rewards[:, 1]), rewards[:, 0], rewards[:, 1]


@torch.no_grad()
def score_pairs(model: torch.nn.Module, pairs: Sequence[Pair], seq_len: int, pad_id: int, *,
                indices: Sequence[int] | None = None, batch_size: int = 16,
                device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probs, response lengths), each (len(pairs), 2), for the pairs at `indices` (default all; the
    other rows stay 0). Under FSDP the forwards are collective: every rank must run as many batches."""
    was_training = model.training
    model.eval()
    logps = torch.zeros(len(pairs), 2, dtype=torch.float64)
    lengths = torch.zeros(len(pairs), 2, dtype=torch.long)
    chosen = list(range(len(pairs))) if indices is None else list(indices)
    for start in range(0, len(chosen), batch_size):
        batch = chosen[start:start + batch_size]
        examples = [side for i in batch for side in pairs[i]]
        inputs, _, labels = padded_rows(examples, seq_len, pad_id)
        width = max(len(ids) for ids, _ in examples)
        logits = forward_logits(model, inputs[:, :width].to(device))
        lp, n = sequence_logps(logits, labels[:, :width].to(logits.device))
        logps[batch] = lp.double().cpu().view(-1, 2)
        lengths[batch] = n.cpu().view(-1, 2)
    if was_training:
        model.train()
    return logps, lengths


def sharded_scores(model: torch.nn.Module, pairs: Sequence[Pair], seq_len: int, pad_id: int, *, rank: int,
                   world: int, group: Any = None, batch_size: int = 16,
                   device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """`score_pairs` over all pairs with the work split across `world` data-parallel ranks (each scores pairs
    rank, rank + world, ...; the ranks run equally many forwards) and summed across them."""
    mine = list(range(rank, len(pairs), world))
    per_rank = -(-len(pairs) // world)
    padding = [mine[0] if mine else 0] * (per_rank - len(mine))  # extra forwards keep FSDP's collectives in step
    logps, lengths = score_pairs(model, pairs, seq_len, pad_id, indices=mine + padding, batch_size=batch_size,
                                 device=device)
    if padding:  # the padded rows were scored twice or belong to another rank: clear them
        keep = torch.zeros(len(pairs), dtype=torch.bool)
        keep[mine] = True
        logps[~keep], lengths[~keep] = 0, 0
    if world > 1:
        packed = torch.cat([logps, lengths.double()], dim=1).to(device)
        torch.distributed.all_reduce(packed, group=group)
        packed = packed.cpu()
        logps, lengths = packed[:, :2], packed[:, 2:].round().long()
    return logps, lengths


def pair_metrics(policy: torch.Tensor, reference: torch.Tensor, lengths: torch.Tensor, *, beta: float,
                 kind: str) -> dict[str, float]:
    """Loss, reward accuracy, margin and mean rewards over whole pairs (held-out evaluation)."""
    losses, chosen, rejected = dpo_loss(policy, reference, lengths, beta=beta, kind=kind)
    return {"loss": float(losses.mean()), "reward_accuracy": float((chosen > rejected).double().mean()),
            "reward_margin": float((chosen - rejected).mean()), "chosen_reward": float(chosen.mean()),
            "rejected_reward": float(rejected.mean()), "pairs": len(losses)}


# --------------------------------------------------------------------------- data

class DPODataset(IterableDataset, Stateful):
    """Pairs in a seeded shuffled order per epoch; rank r of W takes pairs r, r + W, ... of the global order.
    Yields `({"input", "positions", "ref_logps"}, labels)` with a leading [chosen, rejected] axis of 2; the
    trainer flattens a batch to 2B rows. `reference` ((N, 2) summed log-probs) must be set before iterating."""

    def __init__(self, pairs: Sequence[Pair], seq_len: int, pad_id: int, *, seed: int = 0, dp_rank: int = 0,
                 dp_world_size: int = 1):
        if not pairs:
            raise ValueError("DPO data: no preference pairs")
        self.pairs, self.seq_len, self.pad_id, self.seed = list(pairs), seq_len, pad_id, seed
        self.dp_rank, self.dp_world_size = dp_rank, dp_world_size
        self.reference: torch.Tensor | None = None
        self._epoch, self._cursor = 0, 0

    def _order(self) -> list[int]:
        order = list(range(len(self.pairs)))
        random.Random(f"dpo-{self.seed}-{self._epoch}").shuffle(order)
        return order

    def __iter__(self) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        if self.reference is None:
            raise RuntimeError("DPODataset: reference log-probs not computed (DPOTrainer sets them)")
        order = self._order()
        while True:
            if self._cursor >= len(order):
                self._epoch, self._cursor = self._epoch + 1, 0
                order = self._order()
            index = order[self._cursor]
            self._cursor += 1
            if (self._cursor - 1) % self.dp_world_size != self.dp_rank:
                continue
            inputs, positions, labels = padded_rows(self.pairs[index], self.seq_len, self.pad_id)
            yield {"input": inputs, "positions": positions, "ref_logps": self.reference[index].float()}, labels

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self._epoch, "cursor": self._cursor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._epoch, self._cursor = int(state["epoch"]), int(state["cursor"])


class DPODataLoader(SourceDataLoader):
    """torchtitan dataloader over a `DPODataset` of the source's preference pairs."""

    @dataclass(kw_only=True, slots=True)
    class Config(SourceDataLoader.Config):
        pass

    def build_dataset(self, config: Config, *, tokenizer: Any, seq_len: int, dp_rank: int,
                      dp_world_size: int) -> DPODataset:
        pairs = tokenize_pairs(tokenizer, load_pairs(config.source), seq_len)
        return DPODataset(pairs, seq_len, special_id(tokenizer, PAD), seed=config.seed, dp_rank=dp_rank,
                          dp_world_size=dp_world_size)


# --------------------------------------------------------------------------- the trainer

class DPOTrainer(RecipeTrainer):
    """RecipeTrainer with the DPO loss in place of cross-entropy (same loop, optimizer, checkpoints, metrics)."""

    @dataclass(kw_only=True, slots=True)
    class Config(RecipeTrainer.Config):
        beta: float = 0.1
        dpo_loss: str = "dpo"
        held_out: dict[str, Any] | None = None
        """A preference source ({path|hf, split}) scored against the reference before and after training."""

    def __init__(self, config: Config):
        if config.dpo_loss not in LOSS_KINDS:
            raise ValueError(f"dpo loss {config.dpo_loss!r}: expected one of {LOSS_KINDS}")
        if self.parallel_dims_unsupported(config):
            raise NotImplementedError("DPO supports data parallelism (FSDP, replicate) and tensor parallelism; "
                                      "not pipeline or context parallelism")
        super().__init__(config)  # loads the `from` weights: the frozen reference
        # step sums: pairs, accurate pairs, margin, chosen reward, rejected reward
        self._stats = torch.zeros(5, dtype=torch.float64, device=self.device)
        dataset = self.dataloader.dataset
        self.pad_id = dataset.pad_id
        logps, _ = self.score(dataset.pairs)
        dataset.reference = logps
        self.held_out: tuple[list[Pair], torch.Tensor] | None = None
        if config.held_out is not None:
            pairs = tokenize_pairs(self.tokenizer, load_pairs(config.held_out), config.training.seq_len)
            self.held_out = (pairs, self.score(pairs)[0])

    @staticmethod
    def parallel_dims_unsupported(config: Config) -> bool:
        p = config.parallelism
        return p.pipeline_parallel_degree > 1 or p.context_parallel_degree > 1

    def _batch_group(self) -> tuple[int, int, Any]:
        if not self.parallel_dims.dp_enabled:
            return 0, 1, None
        mesh = self.parallel_dims.get_mesh("batch")
        return mesh.get_local_rank(), mesh.size(), mesh.get_group()

    def score(self, pairs: Sequence[Pair]) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed log-probs and lengths (N, 2) of `pairs` under the current weights (the reference before training,
        the policy after), the work split across data-parallel ranks."""
        rank, world, group = self._batch_group()
        return sharded_scores(self.model_parts[0], pairs, self.config.training.seq_len, self.pad_id, rank=rank,
                              world=world, group=group, device=self.device)

    def post_dataloading_process(self, input_dict: dict[str, torch.Tensor],
                                 labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        flat = {k: v.flatten(0, 1) for k, v in input_dict.items()}  # (B, 2, ...) -> (2B, ...)
        return super().post_dataloading_process(flat, labels.flatten(0, 1))

    def _forward_backward_body(self, inputs: torch.Tensor, labels: torch.Tensor, global_valid_tokens: torch.Tensor,
                               extra_kwargs: dict[str, Any]) -> torch.Tensor:
        reference = extra_kwargs.pop("ref_logps").view(-1, 2)
        with self.train_context():
            pred = self.model_parts[0](inputs, **extra_kwargs)
            if hasattr(pred, "full_tensor"):  # tensor parallel: gather the vocabulary shards
                pred = pred.full_tensor()
            logps, lengths = sequence_logps(pred, labels)
            del pred
            losses, chosen, rejected = dpo_loss(logps.view(-1, 2), reference.to(logps.dtype), lengths.view(-1, 2),
                                                beta=self.config.beta, kind=self.config.dpo_loss)
            # a mean over the optimizer step's pairs: the Trainer sums micro-batches and data-parallel ranks
            loss = losses.sum() / self.config.training.global_batch_size
            loss.backward()
        with torch.no_grad():  # stays on the device: no host sync per micro-batch
            self._stats += torch.stack([torch.ones_like(chosen).sum(), (chosen > rejected).sum(),
                                        (chosen - rejected).sum(), chosen.sum(), rejected.sum()]).double()
        return loss.detach()

    def step_metrics(self) -> dict[str, float]:
        stats = self._stats.clone()
        _, world, group = self._batch_group()
        if world > 1:
            torch.distributed.all_reduce(stats, group=group)
        self._stats.zero_()
        n = float(stats[0])
        if n == 0:
            return {}
        return {"reward_accuracy": float(stats[1]) / n, "reward_margin": float(stats[2]) / n,
                "chosen_reward": float(stats[3]) / n, "rejected_reward": float(stats[4]) / n}

    def evaluate_held_out(self) -> dict[str, float] | None:
        """DPO metrics of the current policy on the held-out pairs (their reference scores were taken at build
        time, before any training step or checkpoint restore); None without held-out pairs."""
        if self.held_out is None:
            return None
        pairs, reference = self.held_out
        policy, lengths = self.score(pairs)
        return pair_metrics(policy, reference, lengths, beta=self.config.beta, kind=self.config.dpo_loss)
