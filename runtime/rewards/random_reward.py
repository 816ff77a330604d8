"""The `random_reward` control: the same RL stage, rewarded by coin flips instead of verifiers.

Why this control: if a run rewarded at random gains nearly as much as the real one, the gain came from the
optimiser and the data (format drift, length changes, clipping bias), not from the reward ("spurious rewards",
Shao et al. 2025, whose random reward is the same Bernoulli draw).

The choices, and why:
- **Bernoulli(p), p = 0.5, times the sum of the weights**: the real total lies in [0, sum of weights]; a coin
  flip over the same two ends has the same range, and p = 0.5 gives groups the most reward variance, so GRPO's
  group-normalised advantages are as large as the real run's can be. (Matching the real run's mean instead
  would need its success rate, which changes during training; the comparison would then depend on when it
  was measured.)
- **Independent of the completion**: the point of the control is a reward that carries no information.
- **Keyed, not drawn from a running generator**: the value is a hash of (seed, step, sample key, index of the
  completion among this sample's completions in the step), so it is the same whatever order an asynchronous
  loop scores completions in, and a rerun with the same seed gives the same rewards. The index matters: the
  completions of one prompt form a GRPO group, and identical draws within a group would give zero advantage.
- The sample key is the row's `id` when it has one, else a hash of the row's canonical JSON.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping, Sequence

from runtime.rewards.base import RewardResult
from runtime.rewards.scoring import Scored, reward_weights

NAME = "random_reward"


def sample_key(sample: Mapping[str, Any]) -> str:
    """The row's `id`, or a hash of its canonical JSON."""
    if "id" in sample:
        return str(sample["id"])
    blob = json.dumps(sample, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def coin(seed: int, step: int, key: str, index: int, p: float = 0.5) -> float:
    """1.0 with probability p, else 0.0: a pure function of its arguments."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1] (got {p})")
    digest = hashlib.blake2b(f"{seed}\x00{step}\x00{key}\x00{index}".encode(), digest_size=8).digest()
    return float(int.from_bytes(digest, "big") / 2**64 < p)


class RandomRewards:
    """The control's reward: coin(seed, step, sample, index) * sum of the configured weights."""

    def __init__(self, config: Sequence[Any], *, seed: int, p: float = 0.5) -> None:
        self.scale = sum(reward_weights(config).values())
        self.seed, self.p = seed, p
        coin(seed, 0, "", 0, p)  # validates p

    def score(self, completion: str, sample: Mapping[str, Any], *, step: int, index: int) -> Scored:
        """(total, {"random_reward": result}) for the index-th completion of `sample` at `step`."""
        key = sample_key(sample)
        value = coin(self.seed, step, key, index, self.p)
        details = {"seed": self.seed, "step": step, "key": key, "index": index, "p": self.p}
        return self.scale * value, {NAME: RewardResult(value, details)}

    def score_batch(self, completions: Sequence[str], samples: Sequence[Mapping[str, Any]], *,
                    step: int) -> list[Scored]:
        """score() of each pair; a completion's index is how many earlier ones in the batch share its sample."""
        if len(completions) != len(samples):
            raise ValueError(f"{len(completions)} completions but {len(samples)} samples")
        seen: dict[str, int] = {}
        out = []
        for completion, sample in zip(completions, samples):
            key = sample_key(sample)
            index = seen.get(key, 0)
            seen[key] = index + 1
            out.append(self.score(completion, sample, step=step, index=index))
        return out
