"""The `math` verifier: 1.0 when the completion's final answer equals the row's `answer`, after normalisation.

The final answer is the text after the last "Answer:" (the toy world's format; `runtime.answers.answer_of`,
the same rule its held-out accuracy uses), or the whole completion when there is none.

Normalisation (`normalise`): surrounding whitespace and `$`, a `\\boxed{...}` wrapper, inner runs of whitespace,
trailing periods, a leading `+`, the Unicode minus sign, thousands separators in numbers (`1,234`). Then two answers match when the
strings are equal, or when both read as exact rationals and are equal as numbers (`12.0` = `12`, `1/2` = `0.5`,
`-3` = `-3.00`; `fractions.Fraction`, no floating-point rounding).

math-verify (`pip install math-verify`, not a declared dependency) is a fallback only where the normaliser is
not authoritative: when the answers are not both plain numbers (LaTeX, expressions, sets). It is used when
importable, in the main thread only, and on answers of at most 64 characters: its time limits use SIGALRM,
which works only in the main thread, and without them it hangs on inputs like `9**9**9**9` (checked); elsewhere
it is skipped and `details["math_verify"]` says why. The toy world's answers are integers, which never reach it.
"""
from __future__ import annotations

import re
import threading
from fractions import Fraction
from typing import Any, Mapping

from runtime.answers import answer_of
from runtime.rewards.base import RewardResult, required

_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?:\D|$))")
_BOXED = re.compile(r"^\\boxed\{(.*)\}$", re.S)
_NUMBER = re.compile(r"^-?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?(/\d+)?$")
MATH_VERIFY_MAX_CHARS = 64


def normalise(answer: str) -> str:
    """The comparable form of an answer string (see the module docstring)."""
    s = " ".join(answer.replace("\u2212", "-").split())
    s = s.strip("$ ")
    boxed = _BOXED.match(s)
    if boxed:
        s = boxed.group(1).strip()
    s = s.rstrip(".").strip()
    if s.startswith("+"):
        s = s[1:].lstrip()
    s = _THOUSANDS.sub("", s)
    return s.replace("- ", "-", 1) if s.startswith("- ") else s


def as_number(s: str) -> Fraction | None:
    """The exact value of a plain number (integer, decimal, scientific, a/b), else None."""
    if not _NUMBER.match(s):
        return None
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def _math_verify(gold: str, pred: str) -> tuple[bool | None, str]:
    """(match, note) from math-verify, or (None, why it was not asked)."""
    if threading.current_thread() is not threading.main_thread():
        return None, "skipped: not the main thread (its timeouts need SIGALRM)"
    if max(len(gold), len(pred)) > MATH_VERIFY_MAX_CHARS:
        return None, f"skipped: answer longer than {MATH_VERIFY_MAX_CHARS} characters"
    try:
        from math_verify import parse, verify
    except ImportError:
        return None, "not installed"
    try:
        return bool(verify(parse(gold, parsing_timeout=1), parse(pred, parsing_timeout=1), timeout_seconds=1)), "used"
    except Exception as e:  # noqa: BLE001 - a parser failure on model output is a non-match, not a crash
        return False, f"error: {type(e).__name__}"


class MathVerifier:
    """Normalised exact match of the final answer against `sample["answer"]`."""

    name = "math"

    def __init__(self, use_math_verify: bool = True) -> None:
        self.use_math_verify = use_math_verify

    def score(self, completion: str, sample: Mapping[str, Any]) -> RewardResult:
        gold_raw = str(required(sample, "answer", self.name))
        pred_raw = answer_of(completion)
        gold, pred = normalise(gold_raw), normalise(pred_raw)
        details: dict[str, Any] = {"answer": pred_raw[:200], "expected": gold_raw}
        if pred and pred == gold:
            return RewardResult(1.0, {**details, "match": "exact"})
        g, p = as_number(gold), as_number(pred)
        if g is not None and p is not None:
            return RewardResult(float(g == p), {**details, "match": "numeric" if g == p else "none"})
        if self.use_math_verify and pred:
            ok, note = _math_verify(gold, pred)
            details["math_verify"] = note
            if ok:
                return RewardResult(1.0, {**details, "match": "math_verify"})
        return RewardResult(0.0, {**details, "match": "none"})
