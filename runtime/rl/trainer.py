"""`GRPOTrainer`: torchtitan's Trainer (through `RecipeTrainer`) with rollouts from the vLLM sidecar and the GRPO loss.

What is torchtitan's, unchanged: the model and its init (`init_hf_path`: the `from` stage's export), the AdamW
optimizer, the LR schedule, DCP checkpoints (save every `checkpoint_every` RL steps, resume from the latest at
`train()` start; the rollout cursor is part of the train state) and the step loop (`train()`).
What this class replaces is `train_step`: one RL step =

1. `take` the next rollout batch from the async loop (`runtime.rl.rollouts`; waits when generation is behind; samples
   staler than `max_staleness` dropped and counted);
2. group-normalised advantages per prompt; groups with zero reward variance carry no policy gradient and are left out
   of the forward/backward (unless `kl_coef > 0`: their KL term still counts). With `active_sampling` the rollout
   loop has already left them out and drawn more prompts in their place; a batch in which it found none trains on
   nothing (the step counts; the weights are pushed unchanged);
3. behaviour log-probs: `recompute` scores the batch with the weights current when it was taken (before this
   step's update: the first update's own forward pass, a separate pass only for later mini-batches) and corrects
   trainer vs sidecar with `tis` / `mis` (rho = exp(trainer - sidecar)); `rollout` uses
   the sidecar's log-probs as the PPO denominator (the ratio then already reweights sidecar -> trainer, so `tis`
   adds nothing and is not applied; `mis` masks tokens whose rho against the current policy leaves [low, cap]);
4. `mini_batches_per_step` optimizer updates, each over its share of the samples in micro-batches of
   `micro_batch_size`, the loss summed over response tokens and divided by the mini-batch's response-token count
   (token-level aggregation), gradients clipped at `grad_clip`; the LR schedule steps once per RL step;
5. push the new weights to the sidecar as version = step (`pause("keep")`, reload, resume with in-flight updates),
   which lets the next rollout batch start;
6. one metrics.jsonl line (see `RLStats.metrics`).

Several processes (`scale.processes` > 1, torchrun, FSDP): rank 0 alone talks to the sidecar (the loop, the pushes,
the held-out answers) and broadcasts each batch; every rank trains on its share of each mini-batch
(`shard_for_rank`, padded so that every rank runs the same forward/backward passes, which FSDP's collectives need),
the loss divided by the mini-batch's response-token count over all ranks (torchtitan's FSDP sums gradients across
ranks, it does not average them); the weights of a push are gathered on every rank (collective).
Entry: `runtime.rl:run_trainer` (runtime/rl/job.py). Test: `python -m pytest tests/runtime/test_rl.py -q`.
"""
from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch.distributed.checkpoint.stateful import Stateful
from torch.utils.data import IterableDataset

from runtime.lm_data import SourceDataLoader, load_source
from runtime.lm_eval import forward_logits
from runtime.lm_trainer import RecipeTrainer
from runtime.outputs import atomic_write_json
from runtime.rl.loss import correction, group_advantages, grpo_token_loss, token_logprobs
from runtime.rl.rollouts import AsyncRollouts, LoopSettings, Rollout, RolloutBatch
from runtime.sft_data import special_id
from runtime.tokenizer import EOS, PAD


EVAL_BEFORE = "held-out-before.json"


def rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def from_leader(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (every rank calls this; the others pass anything)."""
    if rank_and_world()[1] == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_floats(values: Sequence[float], *, op: str = "sum") -> list[float]:
    """Element-wise sum (or max) of `values` over every rank."""
    if rank_and_world()[1] == 1:
        return list(values)
    tensor = torch.tensor(list(values), dtype=torch.float64)
    reduce_op = torch.distributed.ReduceOp.MAX if op == "max" else torch.distributed.ReduceOp.SUM
    torch.distributed.all_reduce(tensor, op=reduce_op)
    return tensor.tolist()


def shard_for_rank(n: int, mini_batches: int, rank: int, world: int) -> list[list[int | None]]:
    """The sample indices (of `n`, in `mini_batches` consecutive mini-batches) this rank trains on, per mini-batch:
    every world-th sample from the rank's offset, padded with None (a row with no tokens) to the same length on
    every rank, so that all ranks run the same number of forward/backward passes."""
    per_update = -(-n // max(mini_batches, 1))
    out: list[list[int | None]] = []
    for first in range(0, n, per_update):
        members = list(range(first, min(n, first + per_update)))
        width = -(-len(members) // world)
        mine: list[int | None] = list(members[rank::world])
        out.append(mine + [None] * (width - len(mine)))
    return out


# --------------------------------------------------------------------------- prompts

def prompt_tokens_of(tokenizer: Any, text: str) -> list[int]:
    """The chat-format prompt (a user turn, then the assistant marker), as SFT trained and the eval asks."""
    from runtime.answer_eval import prompt_tokens

    return prompt_tokens(tokenizer, {"question": text}, chat=True)


class PromptSet(IterableDataset, Stateful):
    """The RL prompt rows with their chat-format tokens; batch k's prompts are positions [kP, (k+1)P) of a seeded
    shuffled order per epoch (`batch`), so the rollout cursor alone says where a resumed job goes on. It is the
    trainer's dataloader dataset only so that torchtitan builds and checkpoints it; nothing iterates it."""

    def __init__(self, rows: Sequence[Mapping[str, Any]], tokens: Sequence[list[int]], *, seed: int = 0):
        if not rows:
            raise ValueError("RL prompts: no rows")
        self.rows, self.tokens, self.seed = list(rows), list(tokens), seed
        self._orders: dict[int, list[int]] = {}

    def order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            order = list(range(len(self.rows)))
            random.Random(f"rl-prompts-{self.seed}-{epoch}").shuffle(order)
            self._orders[epoch] = order
        return self._orders[epoch]

    def items(self) -> list[tuple[list[int], Mapping[str, Any]]]:
        return list(zip(self.tokens, self.rows))

    def restrict(self, indices: Sequence[int]) -> None:
        """Keep only these prompts (the difficulty filter's); the shuffled orders are over what is kept."""
        if not indices:
            raise ValueError("RL prompts: the filter kept none")
        self.rows, self.tokens = [self.rows[i] for i in indices], [self.tokens[i] for i in indices]
        self._orders.clear()

    def batch(self, index: int, size: int) -> list[tuple[list[int], Mapping[str, Any]]]:
        out = []
        for position in range(index * size, (index + 1) * size):
            i = self.order(position // len(self.rows))[position % len(self.rows)]
            out.append((self.tokens[i], self.rows[i]))
        return out

    def __iter__(self) -> Iterator[Any]:
        return iter(())  # torchtitan's checkpoint of the dataloader opens an iterator; the loop never reads it

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class PromptDataLoader(SourceDataLoader):
    """torchtitan dataloader holding the RL prompts (`Config.source`: {path|hf, split, text_field})."""

    @dataclass(kw_only=True, slots=True)
    class Config(SourceDataLoader.Config):
        max_prompt_tokens: int = 0
        """Prompts longer than this (tokens) are left out; 0: no limit."""

    def build_dataset(self, config: Config, *, tokenizer: Any, seq_len: int, dp_rank: int,
                      dp_world_size: int) -> PromptSet:
        field_name = config.source.get("text_field") or "prompt"
        rows = [dict(r) for r in load_source(config.source)]
        if rows and field_name not in rows[0]:
            raise ValueError(f"RL prompts: no {field_name!r} field (the rows have {sorted(rows[0])})")
        limit = config.max_prompt_tokens or seq_len
        kept, tokens = [], []
        for row in rows:
            ids = prompt_tokens_of(tokenizer, str(row[field_name]))
            if len(ids) <= limit:
                kept.append(row)
                tokens.append(ids)
        return PromptSet(kept, tokens, seed=config.seed)


# --------------------------------------------------------------------------- per-step statistics

@dataclass
class RLStats:
    """What one RL step logs (sums; `metrics()` turns them into the metrics.jsonl fields)."""

    rewards: list[float] = field(default_factory=list)
    per_verifier: dict[str, list[float]] = field(default_factory=dict)
    lengths: list[int] = field(default_factory=list)
    truncated: int = 0
    groups: int = 0
    zero_variance_groups: int = 0
    prompts_drawn: int = 0
    filtered_groups: int = 0  # active sampling: left out by the rollout loop for having no reward variance
    sampling_rounds: int = 0
    drawn_reward_sum: float = 0.0
    drawn_samples: int = 0
    drawn_verifier_sums: Counter[str] = field(default_factory=Counter)
    dropped: int = 0
    staleness: Counter[int] = field(default_factory=Counter)
    tokens: int = 0
    rho_sum: float = 0.0
    rho_max: float = 0.0
    rho_tokens: int = 0
    n_truncated: int = 0
    n_masked: int = 0
    kl_sidecar_sum: float = 0.0
    clipped: int = 0
    kl_ref_sum: float = 0.0
    loss_sum: float = 0.0
    updates: int = 0
    grad_norm: float = 0.0
    two_span_samples: int = 0
    fresh_diff_sum: float = 0.0  # |trainer - sidecar| log-prob over tokens sampled by the very weights trained on
    fresh_diff_max: float = 0.0
    fresh_tokens: int = 0

    def add_rollouts(self, batch: RolloutBatch) -> None:
        for r in batch.rollouts:
            self.rewards.append(r.reward)
            for name, value in r.rewards.items():
                self.per_verifier.setdefault(name, []).append(value)
            self.lengths.append(len(r.sample.token_ids))
            self.truncated += r.sample.finish_reason == "length"
            self.two_span_samples += len({s.version for s in r.sample.versions}) > 1
        self.dropped += batch.dropped
        self.staleness.update(batch.staleness)
        self.prompts_drawn += batch.prompts_drawn
        self.filtered_groups += batch.filtered_groups
        self.sampling_rounds += batch.rounds
        self.drawn_reward_sum += batch.drawn_reward_sum
        self.drawn_samples += batch.drawn_samples
        self.drawn_verifier_sums.update(batch.drawn_verifier_sums)

    def add_fresh_diff(self, trainer: torch.Tensor, sidecar: torch.Tensor, mask: torch.Tensor) -> None:
        """|trainer - sidecar| on tokens whose sampling weights are the trainer's (identical weights)."""
        if mask.any():
            diff = (trainer - sidecar)[mask].abs().double()
            self.fresh_diff_sum += float(diff.sum())
            self.fresh_diff_max = max(self.fresh_diff_max, float(diff.max()))
            self.fresh_tokens += int(mask.sum())

    def add_correction(self, rho: torch.Tensor, truncated: torch.Tensor, masked: torch.Tensor,
                       kl_sidecar: torch.Tensor, mask: torch.Tensor) -> None:
        m = mask.bool()
        if not m.any():
            return
        values = rho[m].double()
        self.rho_sum += float(values.sum())
        self.rho_max = max(self.rho_max, float(values.max()))
        self.rho_tokens += int(m.sum())
        self.n_truncated += int((truncated & m).sum())
        self.n_masked += int((masked & m).sum())
        self.kl_sidecar_sum += float(kl_sidecar[m].double().sum())

    TOKEN_SUMS = ("tokens", "rho_sum", "rho_tokens", "n_truncated", "n_masked", "kl_sidecar_sum", "clipped",
                  "kl_ref_sum", "loss_sum", "fresh_diff_sum", "fresh_tokens")
    TOKEN_MAXES = ("rho_max", "fresh_diff_max")

    def reduce_over_ranks(self) -> None:
        """The token-level figures over every rank's share (the batch-level ones are the same on every rank)."""
        for names, op in ((self.TOKEN_SUMS, "sum"), (self.TOKEN_MAXES, "max")):
            values = all_reduce_floats([float(getattr(self, k)) for k in names], op=op)
            for name, value in zip(names, values):
                setattr(self, name, type(getattr(self, name))(value))

    def metrics(self) -> dict[str, Any]:
        n = max(len(self.rewards), 1)
        mean = sum(self.rewards) / n
        std = (sum((r - mean) ** 2 for r in self.rewards) / n) ** 0.5
        t = max(self.rho_tokens, 1)
        return {
            "reward_mean": mean, "reward_std": std,
            **{f"reward/{k}": sum(v) / max(len(v), 1) for k, v in sorted(self.per_verifier.items())},
            "response_len_mean": sum(self.lengths) / max(len(self.lengths), 1),
            "response_len_max": max(self.lengths, default=0),
            "truncated_frac": self.truncated / max(len(self.lengths), 1),
            "samples": len(self.rewards), "dropped_samples": self.dropped,
            "staleness_hist": {str(k): v for k, v in sorted(self.staleness.items())},
            "groups": self.groups, "zero_variance_groups": self.zero_variance_groups,
            "prompts_drawn": self.prompts_drawn, "filtered_groups": self.filtered_groups,
            "sampling_rounds": self.sampling_rounds,
            "reward_drawn_mean": self.drawn_reward_sum / self.drawn_samples if self.drawn_samples else mean,
            **{f"reward_drawn/{k}": v / self.drawn_samples for k, v in sorted(self.drawn_verifier_sums.items())
               if self.drawn_samples},
            "trained_tokens": self.tokens,
            "rho_mean": self.rho_sum / t if self.rho_tokens else 1.0, "rho_max": self.rho_max if self.rho_tokens else 1.0,
            "is_truncated_frac": self.n_truncated / t, "is_masked_frac": self.n_masked / t,
            "kl_sidecar_trainer": self.kl_sidecar_sum / t,
            "clip_frac": self.clipped / max(self.tokens, 1), "kl_ref": self.kl_ref_sum / max(self.tokens, 1),
            "loss": self.loss_sum / max(self.updates, 1) if self.updates else 0.0,
            "updates": self.updates, "grad_norm": self.grad_norm, "two_span_samples": self.two_span_samples,
            "logprob_diff_fresh_mean": self.fresh_diff_sum / self.fresh_tokens if self.fresh_tokens else None,
            "logprob_diff_fresh_max": self.fresh_diff_max if self.fresh_tokens else None,
        }


# --------------------------------------------------------------------------- batches of samples as tensors

@dataclass
class Rows:
    """Padded tensors of some samples: inputs = prompt + response[:-1], targets = the next tokens; `mask` marks the
    targets that are response tokens (the only ones the loss sees)."""

    inputs: torch.Tensor  # (B, L)
    targets: torch.Tensor  # (B, L)
    mask: torch.Tensor  # bool (B, L)
    sidecar: torch.Tensor  # (B, L) the sidecar's log-probs on the response targets
    adv: torch.Tensor  # (B,)


def reference_compute_dtype(device: torch.device) -> torch.dtype | None:
    """bfloat16 where the hardware computes it natively (CUDA; a CPU with AVX512-BF16 or AMX), else None (fp32).
    The reference model only feeds the KL penalty, whose per-token estimate moves by ~1e-4 (mean) under bf16 matmuls;
    on a 2-core AVX512-BF16 CPU its forward takes 0.28 s instead of 0.42 s per 128 tiny-recipe rollouts."""
    if device.type == "cuda":
        return torch.bfloat16
    if device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()):
        return torch.bfloat16
    return None


def build_rows(samples: Sequence[tuple[Rollout, float] | None], pad_id: int) -> Rows:
    """None: a padding row (pad tokens, nothing masked in: it adds nothing to the loss)."""
    width = max((len(s[0].prompt) + len(s[0].sample.token_ids) - 1 for s in samples if s is not None), default=1)
    n = len(samples)
    inputs = torch.full((n, width), pad_id, dtype=torch.long)
    targets = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.bool)
    sidecar = torch.zeros((n, width), dtype=torch.float32)
    for row, sample in enumerate(samples):
        if sample is None:
            continue
        r = sample[0]
        full = list(r.prompt) + list(r.sample.token_ids)
        p, k = len(r.prompt), len(r.sample.token_ids)
        inputs[row, :len(full) - 1] = torch.tensor(full[:-1])
        targets[row, :len(full) - 1] = torch.tensor(full[1:])
        mask[row, p - 1:p - 1 + k] = True
        sidecar[row, p - 1:p - 1 + k] = torch.tensor(r.sample.logprobs, dtype=torch.float32)
    return Rows(inputs, targets, mask, sidecar, torch.tensor([s[1] if s else 0.0 for s in samples], dtype=torch.float32))


def select(rows: Rows, index: slice) -> Rows:
    """Rows `index`, cut after their last response token (`width`): the rest is right padding, which no kept
    position attends to (causal attention), so the kept log-probs are unchanged and a micro-batch of short
    responses costs what its own longest row costs, not the step's."""
    mask = rows.mask[index]
    used = mask.any(dim=0).nonzero()
    width = int(used.max()) + 1 if len(used) else 1
    return Rows(rows.inputs[index, :width], rows.targets[index, :width], mask[:, :width],
                rows.sidecar[index, :width], rows.adv[index])


def by_length(shard: Sequence[int | None], samples: Sequence[tuple[Rollout, float]]) -> list[int | None]:
    """A mini-batch's sample indices, longest first (padding rows last), so that each micro-batch holds rows of
    similar length. The order does not change the update: the loss is a sum over the mini-batch's tokens."""
    def length(i: int | None) -> int:
        return -1 if i is None else len(samples[i][0].prompt) + len(samples[i][0].sample.token_ids)
    return sorted(shard, key=length, reverse=True)


# --------------------------------------------------------------------------- the trainer

class GRPOTrainer(RecipeTrainer):
    """RecipeTrainer whose step is one asynchronous GRPO step (see the module docstring)."""

    @dataclass(kw_only=True, slots=True)
    class Config(RecipeTrainer.Config):
        rl: dict[str, Any] = field(default_factory=dict)
        """The job's `rl` block: grpo, async, rewards, reward_mode, mini_batches_per_step, rollout_job, weight_sync,
        sidecar_tensor_parallel."""
        model_json: dict[str, Any] = field(default_factory=dict)
        """The job's model block (spec.model.ModelSpec), for the Hugging Face names of a push."""
        sidecar_dir: str = ""
        """The rollout sidecar's output folder (RECIPE_PEER_<ROLLOUT_JOB>)."""
        connect_wait_s: float = 600.0
        eval_rows: list[dict[str, Any]] = field(default_factory=list)
        """Held-out questions scored by greedy exact match before and after RL."""
        reward_seed: int = 0

    def __init__(self, config: Config):
        super().__init__(config)  # loads the `from` weights
        self.rank, self.world = rank_and_world()
        self.leader = self.rank == 0  # the one that talks to the sidecar
        self.rollouts_started = False
        from runtime.rewards import RandomRewards, Rewards
        from spec.model import ModelSpec

        if self.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
            # Not pinned to its own cores (runtime/cpu_cores.py sets OMP_NUM_THREADS when it pins): the sidecar's
            # vLLM shares these cores, half each (measured on 2 busy cores: a step's forward/backward takes ~1 s
            # with one thread, 5-15 s with two threads fighting vLLM's)
            torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
        rl = config.rl
        self.grpo, self.async_cfg = rl["grpo"], rl["async"]
        self.spec = ModelSpec(**config.model_json)
        self.mini_batches = int(rl.get("mini_batches_per_step", 1))
        self.dataset: PromptSet = self.dataloader.dataset
        self.pad_id = special_id(self.tokenizer, PAD)
        self.eos_id = special_id(self.tokenizer, EOS)
        self.random_reward = rl.get("reward_mode", "verifiers") == "random_reward"
        self.rewards: Any = (RandomRewards(rl["rewards"], seed=config.reward_seed) if self.random_reward
                             else Rewards(rl["rewards"]))
        self.reference: torch.nn.Module | None = None
        if float(self.grpo.get("kl_coef", 0.0)) > 0:
            # a plain model on every rank with the `from` weights (the trainer's model is FSDP-wrapped even in one
            # process: no deepcopy; and its gathered state is rank 0's alone)
            from runtime.model_factory import build_model

            if not config.init_hf_path:
                raise ValueError("kl_coef > 0: the KL reference is the `from` model, and this job starts from none")
            self.reference = build_model(self.spec, device=self.device).eval().requires_grad_(False)
            self.reference.load_state_dict(self.hf_full_state(config.init_hf_path))
        self.reference_dtype = reference_compute_dtype(self.device)
        self.rl_next_batch = 0
        self.loop: AsyncRollouts | None = None
        self.handle: Any = None
        self._export_model: torch.nn.Module | None = None
        self.loop_times: dict[str, float] = {}
        self.step_log: list[dict[str, Any]] = []
        self.arith_before: dict[str, Any] | None = None  # measured by the sidecar (`held_out_by_sidecar`)
        self.prompt_filter: dict[str, Any] | None = None  # the difficulty filter's figures, when the stage has one
        self.arith_after: dict[str, Any] | None = None

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "rl_next_batch": self.rl_next_batch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.rl_next_batch = int(state_dict.get("rl_next_batch", 0))

    # ------------------------------------------------------------------ evaluation

    def exact_match(self) -> dict[str, Any]:
        """The held-out questions answered greedily by the trainer's model (one token per forward: slow)."""
        from runtime.answer_eval import exact_match

        return exact_match(self.model_parts[0], self.tokenizer, self.config.eval_rows,
                           max_len=self.config.training.seq_len, chat=True, device=self.device)

    def held_out_by_sidecar(self, version: int) -> dict[str, Any]:
        """The held-out questions answered greedily by the weights the sidecar serves (`version`), within the RL
        response budget, scored as `exact_match` scores: batched in vLLM, seconds where the trainer takes minutes."""
        from runtime.answer_eval import prompt_tokens, score_replies

        rows = self.config.eval_rows
        outputs = self.handle.client.generate([prompt_tokens(self.tokenizer, r, chat=True) for r in rows], n=1,
                                              temperature=0.0, max_tokens=int(self.grpo["max_response_tokens"]),
                                              stop_token_ids=(self.eos_id,))
        return {**score_replies(rows, [self.decode(samples[0].token_ids) for samples in outputs]),
                "weights_version": version}

    def held_out_before(self, version: int) -> dict[str, Any]:
        """The figure before RL: measured once, on the weights served at the job's first start (version 0), and kept
        in the output folder, so that a resumed job still compares against the model RL started from."""
        path = Path(self.config.dump_folder) / EVAL_BEFORE
        if path.is_file():
            return dict(json.loads(path.read_text(encoding="utf-8")))
        before = self.held_out_by_sidecar(version)
        atomic_write_json(path, before)
        return before

    # ------------------------------------------------------------------ the rollout side

    def hf_weights(self) -> dict[str, torch.Tensor]:
        """The current weights under Hugging Face names: gathered whole on CPU (the trainer's parameters may be
        DTensors even in one process) into a plain model, then named by the export's adapter."""
        from runtime.hf_export import hf_state_dict
        from runtime.model_factory import build_model

        state = self.full_state_dict()  # collective: every rank gathers
        if not self.leader:
            return {}
        if self._export_model is None:
            self._export_model = build_model(self.spec, device="cpu")
        self._export_model.load_state_dict(state)
        return hf_state_dict(self._export_model, self.spec)

    def decode(self, tokens: list[int]) -> str:
        return str(self.tokenizer.decode([t for t in tokens if t != self.eos_id]))

    def score(self, index: int, texts: Sequence[str], rows: Sequence[Mapping[str, Any]]
              ) -> list[tuple[float, dict[str, float]]]:
        if self.random_reward:
            scored = self.rewards.score_batch(texts, rows, step=index)
        else:
            scored = self.rewards.score_batch(texts, rows)
        return [(total, {name: float(r.value) for name, r in parts.items()}) for total, parts in scored]

    def start_rollouts(self) -> None:
        """Connect to the sidecar, make it serve the current weights, start the producer (rank 0; the other ranks
        only take part in the weights' gather)."""
        from torchtitan.tools.logging import logger

        from runtime.rollout import SidecarHandle
        from runtime.rollout.weights import weight_sync_for

        out = Path(self.config.dump_folder)
        version = self.step - 1  # train() has already counted the step about to run
        weights = self.hf_weights()  # collective, so every rank gathers whether or not rank 0 pushes
        self.rollouts_started = True
        before = None
        if self.leader:
            self.handle = SidecarHandle.connect(self.config.sidecar_dir, trainer_dir=out,
                                                wait=self.config.connect_wait_s)
            sync = weight_sync_for(self.handle, self.config.rl, out)
            if self.handle.client.weight_version() != version or version > 0:
                sync.push(weights, version)  # a resumed job: the sidecar serves the restored weights
            settings = LoopSettings(group_size=int(self.grpo["group_size"]),
                                    max_tokens=int(self.grpo["max_response_tokens"]),
                                    temperature=float(self.grpo.get("temperature", 1.0)),
                                    max_staleness=int(self.async_cfg.get("max_staleness", 0)),
                                    inflight_updates=bool(self.async_cfg.get("inflight_updates", False)),
                                    stop_token_ids=(self.eos_id,),
                                    active_sampling=bool(self.grpo.get("active_sampling", False)),
                                    max_rounds=int(self.grpo.get("max_sampling_rounds", 1)))
            prompts_per_step = int(self.grpo["prompts_per_step"])
            if self.config.eval_rows:
                before = self.held_out_before(version)
            if self.grpo.get("prompt_filter"):
                self.filter_prompts(settings, version)
            self.loop = AsyncRollouts(self.handle, sync, settings,
                                      prompts=lambda k: self.dataset.batch(k, prompts_per_step),
                                      score=self.score, decode=self.decode, start_batch=self.rl_next_batch,
                                      version=version, log=logger.info).start()
            logger.info(f"rollouts: sidecar {self.handle.info['url']} serving version {version}, batches from "
                        f"{self.rl_next_batch}, max staleness {settings.max_staleness}, {self.world} trainer "
                        f"process(es)")
        self.arith_before = from_leader(before)

    def filter_prompts(self, settings: LoopSettings, version: int) -> None:
        """Keep the prompts the starting model solves sometimes (runtime/rl/prompt_filter.py); done once, before the
        first step, and reused from the output folder by a resumed job. Rank 0 samples while the other ranks wait
        at the next collective: on a large prompt set that wait must fit the process group's timeout."""
        from torchtitan.tools.logging import logger

        from runtime.rewards import Rewards
        from runtime.rl.prompt_filter import FILTER_FILE, filter_prompts, load_or_filter

        samples = int(self.grpo["prompt_filter"].get("samples_per_prompt", 8))
        verifiers = Rewards(self.config.rl["rewards"])  # the random-reward control filters on the real rewards too
        items = self.dataset.items()

        def generate(prompts: Sequence[list[int]], chunk: int) -> list[list[list[int]]]:
            out = self.handle.client.generate(prompts, n=samples, temperature=settings.temperature,
                                              max_tokens=settings.max_tokens, seed=10_000 * (chunk + 1),
                                              stop_token_ids=list(settings.stop_token_ids))
            return [[sample.token_ids for sample in group] for group in out]

        def score(responses: Sequence[list[int]], rows: Sequence[Mapping[str, Any]]) -> list[float]:
            return [total for total, _ in verifiers.score_batch([self.decode(t) for t in responses], rows)]

        if version > 0 and not (Path(self.config.dump_folder) / FILTER_FILE).is_file():
            logger.warning("difficulty filter: no saved result from the job's first start; filtering with the "
                           f"weights of version {version}")
        result = load_or_filter(Path(self.config.dump_folder), len(items), samples,
                                lambda: filter_prompts(generate, score, items, samples=samples, log=logger.info))
        self.prompt_filter = result.summary()
        logger.info(f"difficulty filter: kept {len(result.kept)} of {result.prompts} prompts ({result.always_solved} "
                    f"always solved, {result.never_solved} never, in {samples} samples each; mean reward "
                    f"{result.mean_reward:.3f}; {result.seconds:.0f} s)")
        if result.kept:
            self.dataset.restrict(result.kept)
        else:
            logger.warning("difficulty filter: the starting model's samples of every prompt got equal rewards; "
                           "training on all of them, as without the filter")

    def stop_rollouts(self, reason: str = "training finished") -> None:
        if self.loop is not None:
            self.loop.stop()
        if self.handle is not None:
            self.handle.stop(reason)

    def train(self) -> None:
        try:
            super().train()
            if self.config.eval_rows and self.rollouts_started:
                after = None
                if self.leader:
                    assert self.loop is not None
                    self.loop.stop()
                    self.handle.client.pause("abort")  # the batches generated ahead are not needed any more
                    self.handle.client.resume()
                    after = self.held_out_by_sidecar(self.step)  # the last push: version = last step
                self.arith_after = from_leader(after)
        finally:
            self.stop_rollouts()

    # ------------------------------------------------------------------ one RL step

    def train_step(self, data_iterator: Any) -> None:
        from torchtitan.tools.logging import logger

        if not self.rollouts_started:
            self.start_rollouts()
        started = time.perf_counter()
        version = self.step - 1
        stats = RLStats()
        taken = None
        if self.leader:
            assert self.loop is not None
            batch = self.loop.take(version)
            while not batch.groups and batch.dropped:  # every sample too stale: nothing to train on
                stats.dropped += batch.dropped
                self.loop.release()
                batch = self.loop.take(version)
            taken = (batch, self.loop.next_take, stats.dropped)
        batch, self.rl_next_batch, stats.dropped = from_leader(taken)
        waited = time.perf_counter() - started
        stats.add_rollouts(batch)
        self.learn(batch, stats, version)
        stats.reduce_over_ranks()
        self.lr_schedulers.step()
        trained = time.perf_counter() - started - waited
        weights = self.hf_weights()  # collective
        metrics = {"step": self.step, "batch": batch.index, "lr": self.lr_schedulers.schedulers[0].get_last_lr()[0],
                   **stats.metrics(), "time_wait_s": waited, "time_train_s": trained,
                   "generate_s": batch.generate_s, "batch_attempts": batch.attempts}
        if self.loop is not None:
            push = self.loop.push(weights, self.step)
            self.loop_times = self.loop.idle_fractions()  # as of the end of this step (not of the eval after it)
            metrics.update(time_push_s=push["seconds"], sidecar_restarts=self.loop.restarts)
        metrics["time_step_s"] = time.perf_counter() - started
        self.last_metrics = metrics
        self.step_log.append(metrics)
        if self.metrics_writer is not None:
            self.metrics_writer.write(metrics)
        if self.leader:
            logger.info(f"rl step {self.step}: reward {metrics['reward_mean']:.3f} loss {metrics['loss']:.4f} "
                        f"len {metrics['response_len_mean']:.1f} zero-var {stats.zero_variance_groups}/{stats.groups} "
                        f"drawn {stats.prompts_drawn} "
                        f"stale {metrics['staleness_hist']} wait {waited:.2f}s train {trained:.2f}s")

    def samples_with_advantages(self, batch: RolloutBatch, stats: RLStats) -> list[tuple[Rollout, float]]:
        keep_all = self.reference is not None
        out: list[tuple[Rollout, float]] = []
        for group in batch.groups:
            stats.groups += 1
            if len(group) < 2:  # the rest of its group was dropped as stale: no baseline
                adv, zero = torch.zeros(1, len(group)), torch.tensor([True])
            else:
                adv, zero = group_advantages(torch.tensor([[r.reward for r in group]]),
                                             std_norm=bool(self.grpo.get("advantage_std", True)),
                                             negative_scale=float(self.grpo.get("negative_scale", 1.0)))
            if bool(zero[0]):
                stats.zero_variance_groups += 1
                if not keep_all:
                    continue
            out.extend((r, float(a)) for r, a in zip(group, adv[0].tolist()))
        return out

    @torch.no_grad()
    def logprobs_of(self, model: torch.nn.Module, rows: Rows, *, compute_dtype: torch.dtype | None = None
                    ) -> torch.Tensor:
        """Per-token log-probs of `rows` under `model`; `compute_dtype`: autocast its matmuls to that dtype."""
        temperature = float(self.grpo.get("temperature", 1.0))
        out = torch.zeros(rows.targets.shape, dtype=torch.float32)
        micro = self.config.training.local_batch_size
        for start in range(0, len(rows.inputs), micro):
            part = slice(start, start + micro)
            r = select(rows, part)
            with torch.autocast(self.device.type, dtype=compute_dtype or torch.float32,
                                enabled=compute_dtype is not None):
                logits = forward_logits(model, r.inputs.to(self.device))
            out[part, :r.inputs.shape[1]] = token_logprobs(logits, r.targets.to(logits.device), temperature).cpu()
        return out

    def learn(self, batch: RolloutBatch, stats: RLStats, version: int) -> None:
        samples = self.samples_with_advantages(batch, stats)
        if not samples:
            return  # no signal this step (on every rank: they share the batch): no update, weights pushed unchanged
        model = self.model_parts[0]
        shards = shard_for_rank(len(samples), self.mini_batches, self.rank, self.world)
        mine = [samples[i] if i is not None else None for shard in shards for i in by_length(shard, samples)]
        rows = build_rows(mine, self.pad_id)
        corr_cfg = self.async_cfg.get("correction") or {"kind": "none"}
        kind, level = corr_cfg.get("kind", "none"), corr_cfg.get("level", "token")
        cap, low = float(corr_cfg.get("cap", 2.0)), float(corr_cfg.get("low", 0.0))
        recompute = self.async_cfg.get("logprobs", "recompute") == "recompute"
        # `recompute` scores the batch with the weights as they are before this step's first update: the first
        # update's own forward pass does exactly that, so a separate scoring pass is needed only for the later
        # updates of a step with several mini-batches.
        old = self.logprobs_of(model, rows) if recompute and len(shards) > 1 else None
        fresh = torch.tensor([s is not None and s[0].min_version == s[0].sample.max_version == version
                              for s in mine], dtype=torch.bool)
        ref = (self.logprobs_of(self.reference, rows, compute_dtype=self.reference_dtype)
               if self.reference is not None else None)
        temperature = float(self.grpo.get("temperature", 1.0))
        micro = self.config.training.local_batch_size
        first = 0
        for update, shard in enumerate(shards):
            mini = slice(first, first + len(shard))
            first = mini.stop
            # every rank's response tokens: FSDP sums the ranks' gradients
            n_tokens = max(int(all_reduce_floats([float(rows.mask[mini].sum())])[0]), 1)
            self.optimizers.zero_grad()
            for start in range(mini.start, mini.stop, micro):
                part = slice(start, min(mini.stop, start + micro))
                r = select(rows, part)
                cols = slice(0, r.inputs.shape[1])
                logits = forward_logits(model, r.inputs.to(self.device))
                logp = token_logprobs(logits, r.targets.to(logits.device), temperature)
                mask = r.mask.to(logp.device)
                sidecar = r.sidecar.to(logp.device)
                if recompute:  # trainer vs sidecar on the behaviour (pre-step) weights: tis / mis as configured
                    old_p = logp.detach() if old is None else old[part, cols].to(logp.device)
                    c = correction(old_p, sidecar, mask, kind=kind, level=level, cap=cap, low=low)
                    stats.add_correction(c.rho, c.truncated, c.masked, sidecar - old_p, mask)
                    stats.add_fresh_diff(old_p.cpu(), r.sidecar, r.mask & fresh[part, None])
                else:  # rollout log-probs: the sidecar's are the behaviour policy; mis masks against the current one
                    old_p = sidecar
                    c = correction(logp.detach(), sidecar, mask, kind="mis" if kind == "mis" else "none",
                                   level=level, cap=cap, low=low)
                    if update == 0:
                        stats.add_correction(c.rho, c.truncated, c.masked, sidecar - logp.detach(), mask)
                w = c.weights
                loss_sum, parts = grpo_token_loss(
                    logp, old_p, r.adv.to(logp.device), mask, w, clip_low=float(self.grpo["clip_low"]),
                    clip_high=float(self.grpo["clip_high"]), kl_coef=float(self.grpo.get("kl_coef", 0.0)),
                    ref_logp=None if ref is None else ref[part, cols].to(logp.device))
                loss = loss_sum / n_tokens
                loss.backward()
                stats.loss_sum += float(loss.detach())  # this rank's part: summed over ranks with the rest
                stats.clipped += int(parts["clipped"].sum())
                stats.kl_ref_sum += float((parts["kl"] * mask).sum())
            stats.tokens += int(rows.mask[mini].sum())
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), self.config.training.max_norm)
            self.optimizers.step()
            stats.updates += 1
            stats.grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
