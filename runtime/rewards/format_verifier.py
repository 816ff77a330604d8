"""The `format` verifier: 1.0 when the completion has the shape the toy world's SFT targets have, else 0.0.

Every SFT target (`runtime.toyworld`: arithmetic's `solution`, number words' worked lines) is some working
lines, then a last line `Answer: <value>`, with "Answer:" exactly once and nothing after that line; the longest
is 155 characters. So a completion is well-formed when, after trailing whitespace is dropped:

- it has at most `max_chars` characters (default 1024: several times the longest target, well under a
  rollout's token budget, so rambling that happens to end with an answer line still scores 0);
- its last line is `Answer: ` followed by a non-blank value, and "Answer:" appears nowhere else (two answers
  are a hedge, not a format);
- it has at least `min_lines` lines (default 1: the answer line alone is enough; 2 asks for working too).

Independent of whether the answer is right: that is the `math` verifier's job, and the weighted sum combines
the two.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

from runtime.rewards.base import RewardResult

_ANSWER_LINE = re.compile(r"Answer: \S.*")


class FormatVerifier:
    """Working lines, then exactly one final `Answer: <value>` line, within a length budget."""

    name = "format"

    def __init__(self, max_chars: int = 1024, min_lines: int = 1) -> None:
        if max_chars <= 0 or min_lines <= 0:
            raise ValueError(f"max_chars and min_lines must be > 0 (got {max_chars}, {min_lines})")
        self.max_chars = max_chars
        self.min_lines = min_lines

    def problem(self, completion: str) -> str | None:
        """Why `completion` is not well-formed, or None when it is."""
        text = completion.rstrip()
        if len(text) > self.max_chars:
            return f"longer than {self.max_chars} characters ({len(text)})"
        lines = text.split("\n")
        if not _ANSWER_LINE.fullmatch(lines[-1].strip("\r")):
            return "the last line is not 'Answer: <value>'"
        if text.count("Answer:") != 1:
            return f"'Answer:' appears {text.count('Answer:')} times"
        if len(lines) < self.min_lines:
            return f"{len(lines)} line(s), fewer than {self.min_lines}"
        return None

    def score(self, completion: str, sample: Mapping[str, Any]) -> RewardResult:
        why = self.problem(completion)
        return RewardResult(0.0, {"problem": why}) if why else RewardResult(1.0, {})
