"""The `code` verifier: run the prompt row's tests against the completion's code in the sandbox.

A code prompt row carries `tests`: a list of Python snippets (usually one `assert` each), or one string. Each
runs, in order, in the namespace the completion's code defined, inside one sandboxed process
(`runtime.rewards.sandbox`: no network, read-only filesystem but a fresh working directory, time, memory,
process and file-size limits, a killed process group on timeout).

The code is the last fenced block (```python / ```py / ```), or the whole completion when it has none.

Score: 1.0 when every test passes, else 0.0, the binary verdict RLVR recipes use (a partial score rewards
completions that pass the easy asserts and break the rest). `partial_credit=True` gives passed / total instead.
A completion that times out, crashes, exhausts a limit or never reports scores 0 either way; a row with no
tests is a ValueError (nothing would be verified).
"""
from __future__ import annotations

import re
from typing import Any, Mapping

from runtime.rewards.base import RewardResult, required
from runtime.rewards.sandbox import SandboxLimits, SandboxResult, run_tests

_FENCE = re.compile(r"```(?:python|py|python3)?[ \t]*\n(.*?)```", re.S)


def extract_code(completion: str) -> str:
    """The last fenced code block of `completion`, or all of it."""
    blocks = _FENCE.findall(completion)
    return blocks[-1] if blocks else completion


def sample_tests(sample: Mapping[str, Any]) -> list[str]:
    tests = required(sample, "tests", "code")
    tests = [tests] if isinstance(tests, str) else list(tests)
    if not tests or not all(isinstance(t, str) for t in tests):
        raise ValueError(f"the code verifier needs 'tests' to be a non-empty list of strings (got {tests!r:.80})")
    return tests


class CodeVerifier:
    """All of the row's tests pass in the sandbox (or the fraction that pass, with partial_credit)."""

    name = "code"

    def __init__(self, limits: SandboxLimits = SandboxLimits(), partial_credit: bool = False) -> None:
        self.limits = limits
        self.partial_credit = partial_credit

    def score(self, completion: str, sample: Mapping[str, Any]) -> RewardResult:
        tests = sample_tests(sample)
        return self.verdict(run_tests(extract_code(completion), tests, self.limits))

    def verdict(self, r: SandboxResult) -> RewardResult:
        if self.partial_credit:
            value = r.passed / r.total if r.total else 0.0
        else:
            value = float(r.total > 0 and r.passed == r.total)
        details = {"passed": r.passed, "total": r.total, "timed_out": r.timed_out, "error": r.error,
                   "returncode": r.returncode, "wall_s": r.wall_s, "isolation": r.isolation,
                   "stderr": r.stderr[-500:]}
        return RewardResult(value, details)
