"""The RL stage's reward: the recipe's weighted verifiers, one completion or a step's batch at a time.

    rewards = Rewards(stage.rewards)                      # [Reward(verifier="math", weight=1.0), ...]
    total, per_verifier = rewards.score(completion, row)  # total = sum of weight * value
    scored = rewards.score_batch(completions, rows)       # code runs on a bounded pool, in order

`VERIFIERS` is the one table from a recipe's verifier name (spec.stages.Reward.verifier) to its class.

The total is the plain weighted sum, not divided by the weights' sum: with values in [0, 1] it lies in
[0, sum of weights], and GRPO's group normalisation makes the overall scale irrelevant to the update.

In a batch, the cheap verifiers (math, format) run in the calling thread, in order (math-verify's time limits
need the main thread, see math_verifier); the code verifier's sandboxed runs go to a thread pool of
`workers` (default: the CPUs this process may use), each thread waiting on its own subprocess.
"""
from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Mapping, Sequence

from runtime.rewards.base import RewardResult, Verifier
from runtime.rewards.code_verifier import CodeVerifier
from runtime.rewards.format_verifier import FormatVerifier
from runtime.rewards.math_verifier import MathVerifier

VERIFIERS: dict[str, Callable[[], Verifier]] = {
    "math": MathVerifier,
    "code": CodeVerifier,
    "format": FormatVerifier,
}

Scored = tuple[float, dict[str, RewardResult]]


def reward_weights(config: Sequence[Any]) -> dict[str, float]:
    """{verifier: weight} from the stage's `rewards` (spec Reward models or {verifier, weight} mappings)."""
    weights: dict[str, float] = {}
    for i, item in enumerate(config):
        name = item["verifier"] if isinstance(item, Mapping) else item.verifier
        weight = float(item.get("weight", 1.0) if isinstance(item, Mapping) else item.weight)
        if name not in VERIFIERS:
            raise ValueError(f"rewards[{i}].verifier: unknown verifier {name!r} (known: {', '.join(VERIFIERS)})")
        if name in weights:
            raise ValueError(f"rewards[{i}].verifier: {name!r} is listed twice; give it once with the summed weight")
        if not weight > 0:
            raise ValueError(f"rewards[{i}].weight: must be > 0 (got {weight})")
        weights[name] = weight
    if not weights:
        raise ValueError("rewards: give at least one verifier")
    return weights


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class Rewards:
    """The weighted sum of the configured verifiers; `verifiers` overrides instances (e.g. other limits)."""

    def __init__(self, config: Sequence[Any], *, verifiers: Mapping[str, Verifier] | None = None,
                 workers: int | None = None) -> None:
        self.weights = reward_weights(config)
        given = dict(verifiers or {})
        self.verifiers: dict[str, Verifier] = {n: given.get(n) or VERIFIERS[n]() for n in self.weights}
        self.workers = workers or default_workers()

    @property
    def max_total(self) -> float:
        return sum(self.weights.values())

    def _combine(self, results: dict[str, RewardResult]) -> Scored:
        return sum(self.weights[n] * r.value for n, r in results.items()), results

    def score(self, completion: str, sample: Mapping[str, Any]) -> Scored:
        """(total, {verifier: result}) of one completion."""
        return self._combine({n: v.score(completion, sample) for n, v in self.verifiers.items()})

    def score_batch(self, completions: Sequence[str], samples: Sequence[Mapping[str, Any]]) -> list[Scored]:
        """score() of each (completion, sample) pair, in order; sandboxed code runs concurrently."""
        if len(completions) != len(samples):
            raise ValueError(f"{len(completions)} completions but {len(samples)} samples")
        code = self.verifiers.get("code")
        results: list[dict[str, RewardResult | Future[RewardResult]]] = [{} for _ in completions]
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="reward-code") as pool:
            if code is not None:  # submit first, so the sandboxes run while the cheap verifiers do
                for i, (c, s) in enumerate(zip(completions, samples)):
                    results[i]["code"] = pool.submit(code.score, c, s)
            for i, (c, s) in enumerate(zip(completions, samples)):
                for name, verifier in self.verifiers.items():
                    if name != "code":
                        results[i][name] = verifier.score(c, s)
            done = [{n: (r.result() if isinstance(r, Future) else r) for n, r in row.items()} for row in results]
        return [self._combine({n: row[n] for n in self.verifiers}) for row in done]


def total_reward(completion: str, sample: Mapping[str, Any], rewards_config: Sequence[Any]) -> Scored:
    """(total, {verifier: result}): the weighted sum of default verifiers (build a `Rewards` to reuse them)."""
    return Rewards(rewards_config).score(completion, sample)


def score_batch(completions: Sequence[str], samples: Sequence[Mapping[str, Any]], rewards_config: Sequence[Any],
                *, workers: int | None = None) -> list[Scored]:
    """Rewards(rewards_config, workers=workers).score_batch(completions, samples)."""
    return Rewards(rewards_config, workers=workers).score_batch(completions, samples)
