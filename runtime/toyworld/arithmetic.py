"""Arithmetic problems with worked, digit-by-digit solutions ending in "Answer: N"."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable



# --------------------------------------------------------------------------- arithmetic

@dataclass(frozen=True)
class Problem:
    """One arithmetic problem `a op b` (op in + - *; for - always a >= b)."""
    op: str
    a: int
    b: int

    @property
    def expression(self) -> str:
        return f"{self.a} {self.op} {self.b}"

    @property
    def answer(self) -> int:
        if self.op == "+":
            return self.a + self.b
        if self.op == "-":
            return self.a - self.b
        return self.a * self.b


_QUESTIONS = ("What is {e}?", "Compute {e}.", "Calculate {e}.", "Find the value of {e}.")


def random_problem(rng: random.Random, max_digits: int) -> Problem:
    """A problem whose operands have at most max_digits digits (multiplication: 3 x 2 at most)."""
    roll = rng.random()
    op = "+" if roll < 0.45 else "-" if roll < 0.8 else "*"
    weights = (1, 4, 4, 2, 1, 1)[:max_digits]
    da = rng.choices(range(1, max_digits + 1), weights=weights)[0]
    db = rng.randint(1, da)
    if op == "*":
        da, db = min(da, 3), min(db, 2)
    a = rng.randint(0 if da == 1 else 10 ** (da - 1), 10**da - 1)
    b = rng.randint(0 if db == 1 else 10 ** (db - 1), 10**db - 1)
    if op == "-" and b > a:
        a, b = b, a
    return Problem(op, a, b)


def _column_lines(p: Problem) -> list[str]:
    """Digit-by-digit steps for + (carries) and - (borrows), from the rightmost column."""
    da, db = str(p.a)[::-1], str(p.b)[::-1]
    lines: list[str] = []
    carry = 0
    for i, digit in enumerate(da):
        terms = [digit] + ([db[i]] if i < len(db) else []) + (["1"] if carry else [])
        if p.op == "+":
            value = sum(int(t) for t in terms)
            lines.append(f"{' + '.join(terms)} = {value}, write {value % 10}"
                         + (" carry 1" if value >= 10 else ""))
            carry = int(value >= 10)
        else:
            value = int(terms[0]) - sum(int(t) for t in terms[1:])
            lines.append(f"{' - '.join(terms)} = {value}, write {value % 10}"
                         + (" borrow 1" if value < 0 else ""))
            carry = int(value < 0)
    if carry and p.op == "+":
        lines.append("write the carry 1")
    return lines


def _product_lines(p: Problem) -> list[str]:
    """Partial products, one per digit of b, then their sum."""
    partials: list[int] = []
    lines: list[str] = []
    for i, digit in enumerate(str(p.b)[::-1]):
        factor = int(digit) * 10**i
        partials.append(p.a * factor)
        lines.append(f"{p.a} * {factor} = {partials[-1]}")
    if len(partials) > 1:
        lines.append(f"{' + '.join(str(x) for x in partials)} = {sum(partials)}")
    return lines


def solution(p: Problem) -> str:
    """The worked solution: steps, then the final line "Answer: N"."""
    steps = _product_lines(p) if p.op == "*" else _column_lines(p)
    return "\n".join(steps + [f"Answer: {p.answer}"])


def question(p: Problem, rng: random.Random | None = None) -> str:
    """The question for a problem; a random phrasing when rng is given, else "What is ...?"."""
    template = rng.choice(_QUESTIONS) if rng is not None else _QUESTIONS[0]
    return template.format(e=p.expression)


def raw_prompt(user_question: str) -> str:
    """The pretraining-format prefix of a question: a base model continues with the steps."""
    return f"Question: {user_question}\n"


# A generator draws one document: (dedupe key, record). Keys of arithmetic records are the problem,
# so validation and train never share a problem, whatever the phrasing.
Draw = Callable[[random.Random], tuple[str, dict[str, Any]]]


def arithmetic_doc(rng: random.Random) -> tuple[str, dict[str, Any]]:
    p = random_problem(rng, 5)
    return p.expression, {"text": raw_prompt(question(p, rng)) + solution(p)}


