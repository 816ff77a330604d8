"""Rewards for RLVR: verifiers of completions against a prompt row's verifiable target, and their weighted sum.

- `math` (math_verifier): normalised exact match of the final answer ("Answer: ..."), exact rationals.
- `code` (code_verifier): the row's tests run against the completion's code in a sandbox (sandbox,
  sandbox_boot): no network, read-only filesystem, time/memory/process/file-size limits, killed on timeout.
- `format` (format_verifier): the toy world's shape, working lines then one final "Answer: <value>" line.
- `Rewards` (scoring): the recipe's `rewards: [{verifier, weight}]` as one weighted sum, batch-scored with the
  code sandboxes on a bounded pool; `RandomRewards` (random_reward): the `random_reward` control.

Test: `python -m pytest tests/runtime/test_rewards.py -q`.
"""
from runtime.rewards.base import RewardResult, Verifier
from runtime.rewards.code_verifier import CodeVerifier, extract_code
from runtime.rewards.format_verifier import FormatVerifier
from runtime.rewards.math_verifier import MathVerifier, normalise
from runtime.rewards.random_reward import RandomRewards, coin
from runtime.rewards.sandbox import SandboxError, SandboxLimits, SandboxResult, isolation, run_tests
from runtime.rewards.scoring import VERIFIERS, Rewards, Scored, reward_weights, score_batch, total_reward

__all__ = [
    "VERIFIERS", "CodeVerifier", "FormatVerifier", "MathVerifier", "RandomRewards", "RewardResult", "Rewards",
    "SandboxError", "SandboxLimits", "SandboxResult", "Scored", "Verifier", "coin", "extract_code", "isolation", "normalise",
    "reward_weights", "run_tests", "score_batch", "total_reward",
]
