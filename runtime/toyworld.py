"""The toy world: a deterministic generator of the tiny recipe's local datasets.

Four pretraining sources with distinct skills (so the data mix matters and learning is measurable
on a CPU), plus the post-training sets and a held-out arithmetic eval:

    <out>/arithmetic/{train,validation}.jsonl   {"text"}: a problem, worked steps, "Answer: N"
    <out>/words/{train,validation}.jsonl        {"text"}: numbers <-> English number words, counting
    <out>/code/{train,validation}.jsonl         {"text"}: tiny Python functions (valid syntax) and
                                                a call whose printed value is given in a comment
    <out>/text/{train,validation}.jsonl         {"text"}: simple templated English paragraphs
    <out>/sft/{train,validation}.jsonl          {"messages": [user question, assistant solution]}
    <out>/prompts/{train,validation}.jsonl      {"prompt", "answer"}: DPO delta-pair prompts
    <out>/rl/{train,validation}.jsonl           {"prompt", "answer"}: verifiable arithmetic (RLVR)
    <out>/eval/arith.jsonl                      {"question", "prompt", "answer", "op"}: held out
    <out>/manifest.json                         per set: files, documents, characters (tokens
                                                once the tokenizer is trained), seed and scale

Conventions: answers are decimal integer strings; every worked solution ends with the line
"Answer: N". An eval record's `question` is the chat user message (as in sft/rl/prompts) and its
`prompt` the raw-text prefix a base model continues, in the pretraining format ("Question: ...\n").
Held-out data: validation never shares a document with train (arithmetic-based sets: never the
same problem), and no eval problem appears in any other set.

Determinism: same seed and scale give byte-identical files. Every (set, split) draws from its own
`random.Random(seed * 1000 + offset)` (distinct offsets below 1000, so seeds >= 0 never share a
stream); nothing uses the global RNG or the iteration order of a set or of an unsorted mapping.
`scale` multiplies every document count (the tests use 0.01).

Run it (generates the data, trains the tokenizer into OUT_DIR/tokenizer, counts tokens):

    python -m runtime.toyworld OUT_DIR [--seed 0] [--scale 1.0] [--vocab-size 1024]

This module needs only the standard library; training the tokenizer (`build`, the CLI) needs the
`tokenizers` package (runtime/tokenizer.py).
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

MANIFEST_VERSION = 1
SEED_STRIDE = 1000
VALIDATION_FRACTION = 0.02
MIN_DOCS = 2
PRETRAIN_SOURCES = ("arithmetic", "words", "code", "text")

# Train documents per set at scale 1.0. The pretraining counts are calibrated so that the trained
# 1024-token BPE gives about the tiny recipe's declared tokens (arithmetic 2M, words 1M, code 1M,
# text 4M); the post-training counts cover the tiny recipe's steps several times over.
TRAIN_DOCS: dict[str, int] = {
    "arithmetic": 34_000,
    "words": 8_700,
    "code": 8_000,
    "text": 26_000,
    "sft": 8_000,
    "prompts": 2_000,
    "rl": 2_000,
}
EVAL_DOCS = 500

# RNG stream offsets: (set, split) -> offset below SEED_STRIDE.
_OFFSETS: dict[tuple[str, str], int] = {
    ("eval", "test"): 1,
    ("arithmetic", "validation"): 11, ("arithmetic", "train"): 12,
    ("words", "validation"): 21, ("words", "train"): 22,
    ("code", "validation"): 31, ("code", "train"): 32,
    ("text", "validation"): 41, ("text", "train"): 42,
    ("sft", "validation"): 51, ("sft", "train"): 52,
    ("prompts", "validation"): 61, ("prompts", "train"): 62,
    ("rl", "validation"): 71, ("rl", "train"): 72,
}


def rng_for(seed: int, name: str, split: str) -> random.Random:
    """The private random stream of one (set, split)."""
    return random.Random(seed * SEED_STRIDE + _OFFSETS[(name, split)])


# --------------------------------------------------------------------------- number words

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
         "fifteen sixteen seventeen eighteen nineteen").split()
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def _under_thousand(n: int) -> str:
    parts: list[str] = []
    if n >= 100:
        parts.append(f"{_ONES[n // 100]} hundred")
        n %= 100
    if n >= 20:
        parts.append(_TENS[n // 10] + (f"-{_ONES[n % 10]}" if n % 10 else ""))
    elif n or not parts:
        parts.append(_ONES[n])
    return " ".join(parts)


def number_to_words(n: int) -> str:
    """English words for 0 <= n < 10**9: 412 -> "four hundred twelve", 23 -> "twenty-three"."""
    if not 0 <= n < 10**9:
        raise ValueError(f"number_to_words: {n} out of range [0, 10**9)")
    if n == 0:
        return "zero"
    parts: list[str] = []
    for value, name in ((10**6, " million"), (10**3, " thousand"), (1, "")):
        group = n // value % 1000
        if group:
            parts.append(_under_thousand(group) + name)
    return " ".join(parts)


def _word_components(n: int) -> list[tuple[str, int]]:
    """The summands a reader adds to read n's words: 345612 -> [(... thousand, 345000), ...]."""
    comps: list[tuple[str, int]] = []
    if n >= 1000:
        comps.append((number_to_words(n // 1000 * 1000), n // 1000 * 1000))
    rest = n % 1000
    if rest >= 100:
        comps.append((number_to_words(rest // 100 * 100), rest // 100 * 100))
    if rest % 100 or not comps:
        comps.append((number_to_words(rest % 100), rest % 100))
    return comps


def _random_number(rng: random.Random) -> int:
    """A number for the words skill: small ones often, up to six digits sometimes."""
    kind = rng.random()
    if kind < 0.3:
        return rng.randint(0, 20)
    if kind < 0.55:
        return rng.randint(21, 99)
    if kind < 0.8:
        return rng.randint(100, 999)
    return rng.randint(1000, 999_999)


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


def _arithmetic_doc(rng: random.Random) -> tuple[str, dict[str, Any]]:
    p = random_problem(rng, 5)
    return p.expression, {"text": raw_prompt(question(p, rng)) + solution(p)}


# --------------------------------------------------------------------------- words

_OBJECTS = ("apple", "book", "cup", "hat", "box", "kite", "key", "bag", "lamp", "coat", "shoe",
            "letter", "basket", "stone", "shell", "ball", "flower", "pencil", "coin", "ticket")
_ANIMALS = ("cat", "dog", "bird", "fox", "horse", "rabbit", "duck", "cow", "fish", "mouse", "goat",
            "sheep", "frog", "bee")


def _plural(noun: str, n: int = 2) -> str:
    if n == 1:
        return noun
    if noun in ("fish", "sheep"):
        return noun
    if noun == "mouse":
        return "mice"
    return noun + ("es" if noun.endswith(("x", "s", "sh", "ch")) else "s")


def _words_line(rng: random.Random) -> str:
    kind = rng.randrange(7)
    n = _random_number(rng)
    w = number_to_words(n)
    if kind == 0:
        return f"{n} is {w}."
    if kind == 1:
        return f"{w.capitalize()} is written as {n}."
    if kind == 2:
        start, length = rng.randint(0, 95), rng.randint(3, 6)
        seq = [number_to_words(k) for k in range(start, start + length)]
        return f"Count from {seq[0]} to {seq[-1]}: {', '.join(seq)}."
    if kind == 3:
        step, by = rng.choice(((2, "twos"), (5, "fives"), (10, "tens"), (100, "hundreds")))
        start = rng.randint(0, 20) * step
        seq = [str(start + step * k) for k in range(rng.randint(3, 6))]
        return f"Count by {by} from {start}: {', '.join(seq)}."
    a, b = rng.randint(1, 40), rng.randint(1, 40)
    if kind == 4:
        obj = rng.choice(_OBJECTS + _ANIMALS)
        return (f"There are {number_to_words(a)} {_plural(obj, a)}. Add {number_to_words(b)} more "
                f"and there are {number_to_words(a + b)} {_plural(obj, a + b)}.")
    if kind == 5:
        return f"{number_to_words(a).capitalize()} plus {number_to_words(b)} is {number_to_words(a + b)}."
    return f"The number after {w} is {number_to_words(n + 1)}."


def _words_doc(rng: random.Random) -> tuple[str, dict[str, Any]]:
    text = "\n".join(_words_line(rng) for _ in range(rng.randint(4, 9)))
    return text, {"text": text}


def _words_question(rng: random.Random) -> tuple[str, str, int]:
    """A words question with a worked solution: (question, solution, answer)."""
    if rng.random() < 0.5:
        n = _random_number(rng)
        comps = _word_components(n)
        lines = [f"{words} = {value}" for words, value in comps]
        if len(comps) > 1:
            lines.append(f"{' + '.join(str(v) for _, v in comps)} = {n}")
        q = f"What number is {number_to_words(n)}?"
    else:
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        n = a + b
        lines = [f"{number_to_words(a)} = {a}", f"{number_to_words(b)} = {b}", f"{a} + {b} = {n}"]
        q = f"What is {number_to_words(a)} plus {number_to_words(b)}?"
    return q, "\n".join(lines + [f"Answer: {n}"]), n


# --------------------------------------------------------------------------- code

_NOUNS = ("apple", "score", "price", "box", "step", "item", "value", "coin", "page", "seed", "cup",
          "ticket", "point", "order", "mark", "weight")


def _fn_total(rng: random.Random, sg: str, pl: str) -> tuple[str, str, Callable[[list[int]], Any]]:
    acc = rng.choice(("total", "result", "acc"))
    code = (f"def total_{pl}({pl}):\n    {acc} = 0\n    for {sg} in {pl}:\n"
            f"        {acc} = {acc} + {sg}\n    return {acc}\n")
    return code, f"total_{pl}", sum


def _fn_count_above(rng: random.Random, sg: str, pl: str) -> tuple[str, str, Callable[..., Any]]:
    limit = rng.randint(2, 8)
    code = (f"def count_{pl}_above({pl}, limit={limit}):\n    count = 0\n    for {sg} in {pl}:\n"
            f"        if {sg} > limit:\n            count = count + 1\n    return count\n")
    return code, f"count_{pl}_above", lambda xs: sum(1 for x in xs if x > limit)


def _fn_largest(rng: random.Random, sg: str, pl: str) -> tuple[str, str, Callable[..., Any]]:
    best = rng.choice(("best", "largest", "top"))
    code = (f"def largest_{sg}({pl}):\n    {best} = {pl}[0]\n    for {sg} in {pl}:\n"
            f"        if {sg} > {best}:\n            {best} = {sg}\n    return {best}\n")
    return code, f"largest_{sg}", max


def _fn_scale(rng: random.Random, sg: str, pl: str) -> tuple[str, str, Callable[..., Any]]:
    factor = rng.randint(2, 5)
    code = (f"def scale_{pl}({pl}, factor={factor}):\n    result = []\n    for {sg} in {pl}:\n"
            f"        result.append({sg} * factor)\n    return result\n")
    return code, f"scale_{pl}", lambda xs: [x * factor for x in xs]


def _fn_even(rng: random.Random, sg: str, pl: str) -> tuple[str, str, Callable[..., Any]]:
    kept = rng.choice(("kept", "evens", "found"))
    code = (f"def even_{pl}({pl}):\n    {kept} = []\n    for {sg} in {pl}:\n"
            f"        if {sg} % 2 == 0:\n            {kept}.append({sg})\n    return {kept}\n")
    return code, f"even_{pl}", lambda xs: [x for x in xs if x % 2 == 0]


_LIST_FUNCTIONS = (_fn_total, _fn_count_above, _fn_largest, _fn_scale, _fn_even)

# Two-argument expressions: (source with {x} and {y}, its value).
_EXPRESSIONS: tuple[tuple[str, Callable[[int, int], int]], ...] = (
    ("{x} + {y}", lambda x, y: x + y),
    ("{x} * {y}", lambda x, y: x * y),
    ("{x} * {y} - {x}", lambda x, y: x * y - x),
    ("({x} + {y}) * 2", lambda x, y: (x + y) * 2),
    ("{x} - {y} + 10", lambda x, y: x - y + 10),
    ("{x} * {x} + {y}", lambda x, y: x * x + y),
)


def _code_list_block(rng: random.Random) -> str:
    noun = rng.choice(_NOUNS)
    sg, pl = noun, _plural(noun)
    code, name, fn = rng.choice(_LIST_FUNCTIONS)(rng, sg, pl)
    values = [rng.randint(0, 12) for _ in range(rng.randint(2, 6))]
    return f"{code}\n\n{pl} = {values}\nresult = {name}({pl})\nprint(result)  # {fn(values)}\n"


def _code_expression_block(rng: random.Random) -> str:
    x, y = rng.choice((("width", "height"), ("a", "b"), ("count", "size"), ("left", "right"),
                       ("base", "extra"), ("rows", "cols")))
    name = rng.choice(("combine", "area", "mix", "compute", "measure", "blend"))
    source, fn = rng.choice(_EXPRESSIONS)
    out = rng.choice(("result", "value", "answer"))
    xv, yv = rng.randint(1, 12), rng.randint(1, 12)
    return (f"def {name}({x}, {y}):\n    {out} = {source.format(x=x, y=y)}\n    return {out}\n\n\n"
            f"print({name}({xv}, {yv}))  # {fn(xv, yv)}\n")


def _code_loop_block(rng: random.Random) -> str:
    limit, i = rng.choice(("n", "limit", "end", "top")), rng.choice(("i", "k", "step"))
    total = rng.choice(("total", "acc"))
    n = rng.randint(1, 15)
    if rng.random() < 0.5:
        body = f"        {total} = {total} + {i}\n"
        name, value = "sum_up_to", n * (n + 1) // 2
    else:
        body = f"        if {i} % 2 == 1:\n            {total} = {total} + {i}\n"
        name, value = "sum_odd_up_to", sum(k for k in range(1, n + 1) if k % 2 == 1)
    return (f"def {name}({limit}):\n    {total} = 0\n    {i} = 1\n    while {i} <= {limit}:\n{body}"
            f"        {i} = {i} + 1\n    return {total}\n\n\nprint({name}({n}))  # {value}\n")


def _code_branch_block(rng: random.Random) -> str:
    noun = rng.choice(_NOUNS)
    k, v = rng.randint(3, 20), rng.randint(0, 25)
    value = "big" if v > k else "equal" if v == k else "small"
    return (f"def describe_{noun}({noun}):\n    if {noun} > {k}:\n        return \"big\"\n"
            f"    elif {noun} == {k}:\n        return \"equal\"\n    return \"small\"\n\n\n"
            f"print(describe_{noun}({v}))  # {value}\n")


_CODE_BLOCKS = (_code_list_block, _code_list_block, _code_expression_block, _code_loop_block,
                _code_branch_block)


def _code_doc(rng: random.Random) -> tuple[str, dict[str, Any]]:
    text = "\n\n".join(rng.choice(_CODE_BLOCKS)(rng) for _ in range(rng.randint(1, 3)))
    return text, {"text": text}


# --------------------------------------------------------------------------- plain text

_PEOPLE = (("Anna", "she", "her"), ("Ben", "he", "his"), ("Cara", "she", "her"), ("Dan", "he", "his"),
           ("Eva", "she", "her"), ("Finn", "he", "his"), ("Gina", "she", "her"), ("Hugo", "he", "his"),
           ("Ivy", "she", "her"), ("Jack", "he", "his"), ("Kate", "she", "her"), ("Leo", "he", "his"),
           ("Mia", "she", "her"), ("Nora", "she", "her"), ("Omar", "he", "his"), ("Rosa", "she", "her"),
           ("Sam", "he", "his"), ("Tom", "he", "his"), ("Zoe", "she", "her"), ("Paul", "he", "his"))
_PLACES = ("park", "garden", "kitchen", "school", "market", "forest", "river", "library", "farm",
           "beach", "town", "house", "hill", "shop", "field", "lake")
_ADJECTIVES = ("big", "small", "red", "blue", "green", "old", "new", "happy", "quiet", "warm",
               "cold", "bright", "soft", "tall", "little", "yellow", "clean", "busy")
_VERBS = ("found", "took", "carried", "painted", "washed", "lost", "bought", "opened", "cleaned",
          "dropped", "saw", "liked", "held", "moved", "fixed", "picked up")
_TIMES = ("In the morning", "At noon", "After lunch", "In the evening", "On Monday", "On Sunday",
          "One day", "Later", "Before dinner", "At night")
_WEATHER = ("sunny", "rainy", "windy", "cold", "warm", "quiet", "cloudy")
_FEELINGS = ("happy", "tired", "hungry", "glad", "sleepy", "excited", "calm", "proud")


def _a(word: str) -> str:
    """The word with its indefinite article."""
    return ("an " if word[0] in "aeiou" else "a ") + word


def _sentence(rng: random.Random, who: tuple[str, str, str], friend: tuple[str, str, str],
              place: str) -> str:
    name, pron, poss = who
    subj = name if rng.random() < 0.5 else pron.capitalize()
    kind = rng.randrange(10)
    adj, obj, animal = rng.choice(_ADJECTIVES), rng.choice(_OBJECTS), rng.choice(_ANIMALS)
    if kind == 0:
        return f"{rng.choice(_TIMES)}, {name} went to the {rng.choice(_PLACES)}."
    if kind == 1:
        return f"{subj} {rng.choice(_VERBS)} {_a(adj)} {obj} in the {place}."
    if kind == 2:
        return f"The {animal} was {adj}, and it sat near the {obj}."
    if kind == 3:
        return f"{subj} saw {_a(adj)} {animal} by the {rng.choice(_PLACES)}."
    if kind == 4:
        n = rng.randint(2, 12)
        return f"{subj} had {number_to_words(n)} {_plural(obj, n)} in {poss} bag."
    if kind == 5:
        return f"{friend[0]} came to help, and they {rng.choice(_VERBS)} the {obj} together."
    if kind == 6:
        return f"It was a {rng.choice(_WEATHER)} day, and {pron} felt {rng.choice(_FEELINGS)}."
    if kind == 7:
        return f"{subj} liked the {obj} because it was {adj}."
    if kind == 8:
        return f"{friend[0]} gave {name} {_a(adj)} {obj}, and {pron} said thank you."
    return f"Then {pron} walked home from the {place}."


def _paragraph(rng: random.Random) -> str:
    who = rng.choice(_PEOPLE)
    friend = rng.choice([p for p in _PEOPLE if p != who])
    place = rng.choice(_PLACES)
    first = f"{rng.choice(_TIMES)}, {who[0]} went to the {place} with {friend[0]}."
    rest = [_sentence(rng, who, friend, place) for _ in range(rng.randint(3, 7))]
    return " ".join([first] + rest)


def _text_doc(rng: random.Random) -> tuple[str, dict[str, Any]]:
    text = "\n\n".join(_paragraph(rng) for _ in range(rng.randint(1, 4)))
    return text, {"text": text}


# --------------------------------------------------------------------------- post-training sets

def _eval_doc(rng: random.Random) -> tuple[str, dict[str, Any]]:
    p = random_problem(rng, 3)
    q = question(p)
    return p.expression, {"question": q, "prompt": raw_prompt(q), "answer": str(p.answer), "op": p.op}


def _qa(rng: random.Random, words_fraction: float) -> tuple[str, str, str, str]:
    """(dedupe key, question, worked solution, answer): arithmetic mostly, number words sometimes."""
    if rng.random() < words_fraction:
        q, sol, n = _words_question(rng)
        return q, q, sol, str(n)
    p = random_problem(rng, 4)
    return p.expression, question(p, rng), solution(p), str(p.answer)


def _sft_doc(rng: random.Random) -> tuple[str, dict[str, Any]]:
    key, q, sol, _ = _qa(rng, words_fraction=0.2)
    messages = [{"role": "user", "content": q}, {"role": "assistant", "content": sol}]
    return key, {"messages": messages}


def _prompt_doc(rng: random.Random) -> tuple[str, dict[str, Any]]:
    key, q, _, answer = _qa(rng, words_fraction=0.2)
    return key, {"prompt": q, "answer": answer}


def _rl_doc(rng: random.Random) -> tuple[str, dict[str, Any]]:
    p = random_problem(rng, 3)
    return p.expression, {"prompt": question(p, rng), "answer": str(p.answer)}


# name -> (draw one document, whether eval problems are held out of it)
SETS: dict[str, tuple[Draw, bool]] = {
    "arithmetic": (_arithmetic_doc, True),
    "words": (_words_doc, False),
    "code": (_code_doc, False),
    "text": (_text_doc, False),
    "sft": (_sft_doc, True),
    "prompts": (_prompt_doc, True),
    "rl": (_rl_doc, True),
}


# --------------------------------------------------------------------------- generation

def draw_unique(draw: Draw, rng: random.Random, n: int, seen: set[str]) -> list[dict[str, Any]]:
    """n documents whose keys are not in `seen` (which grows); fewer if the space runs dry."""
    out: list[dict[str, Any]] = []
    attempts = 0
    while len(out) < n and attempts < 20 * n + 100:
        attempts += 1
        key, record = draw(rng)
        if key not in seen:
            seen.add(key)
            out.append(record)
    return out


def make_splits(draw: Draw, seed: int, name: str, n_train: int, n_val: int,
                exclude: set[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(validation, train) of one set: no key twice, none from `exclude`, validation drawn first."""
    seen = set(exclude)
    val = draw_unique(draw, rng_for(seed, name, "validation"), n_val, seen)
    train = draw_unique(draw, rng_for(seed, name, "train"), n_train, seen)
    return val, train


def doc_counts(scale: float) -> dict[str, tuple[int, int]]:
    """(train, validation) document counts per set at this scale."""
    counts: dict[str, tuple[int, int]] = {}
    for name, base in TRAIN_DOCS.items():
        train = max(MIN_DOCS, round(base * scale))
        counts[name] = (train, max(MIN_DOCS, round(train * VALIDATION_FRACTION)))
    return counts


def record_chars(record: dict[str, Any]) -> int:
    """Characters of a record's text: `text`, the messages' contents, or prompt/question."""
    if "text" in record:
        return len(record["text"])
    if "messages" in record:
        return sum(len(m["content"]) for m in record["messages"])
    return len(record.get("prompt") or record.get("question") or "")


def write_jsonl(path: Path, records: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in records]
    path.write_text("".join(lines), encoding="utf-8")


def _entry(out_dir: Path, kind: str, splits: dict[str, tuple[Path, list[dict[str, Any]]]]) -> dict[str, Any]:
    return {
        "kind": kind,
        "files": {s: path.relative_to(out_dir).as_posix() for s, (path, _) in splits.items()},
        "documents": {s: len(recs) for s, (_, recs) in splits.items()},
        "characters": {s: sum(record_chars(r) for r in recs) for s, (_, recs) in splits.items()},
    }


def generate(out_dir: Path, *, seed: int = 0, scale: float = 1.0) -> dict[str, Any]:
    """Write every set and `manifest.json` under out_dir; returns the manifest (no token counts)."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0 (got {seed})")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive number (got {scale})")
    out_dir = Path(out_dir)
    counts = doc_counts(scale)
    n_eval = max(MIN_DOCS, round(EVAL_DOCS * scale))
    held_out: set[str] = set()
    evals = draw_unique(_eval_doc, rng_for(seed, "eval", "test"), n_eval, held_out)
    write_jsonl(out_dir / "eval" / "arith.jsonl", evals)
    sets: dict[str, Any] = {"eval": _entry(out_dir, "eval", {"test": (out_dir / "eval" / "arith.jsonl", evals)})}
    for name, (draw, hold_out_eval) in SETS.items():
        n_train, n_val = counts[name]
        val, train = make_splits(draw, seed, name, n_train, n_val, held_out if hold_out_eval else set())
        splits = {"train": (out_dir / name / "train.jsonl", train),
                  "validation": (out_dir / name / "validation.jsonl", val)}
        for path, records in splits.values():
            write_jsonl(path, records)
        sets[name] = _entry(out_dir, "pretrain" if name in PRETRAIN_SOURCES else name, splits)
    manifest = {"format_version": MANIFEST_VERSION, "generator": "runtime.toyworld",
                "seed": seed, "scale": scale, "sets": dict(sorted(sets.items()))}
    write_manifest(out_dir, manifest)
    return manifest


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    (Path(out_dir) / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- tokenizer and CLI

def tokenizer_files(out_dir: Path, manifest: dict[str, Any]) -> list[Path]:
    """The files the tokenizer trains on: the pretraining sources' train splits, in a fixed order."""
    return [Path(out_dir) / manifest["sets"][name]["files"]["train"] for name in PRETRAIN_SOURCES]


def add_token_counts(out_dir: Path, manifest: dict[str, Any], tokenizer_dir: Path) -> dict[str, Any]:
    """Fill per-split token counts into the manifest (and manifest.json) with the trained tokenizer."""
    from runtime.tokenizer import count_tokens, load_tokenizer

    out_dir = Path(out_dir)
    for entry in manifest["sets"].values():
        entry["tokens"] = {split: count_tokens(tokenizer_dir, [out_dir / rel])
                           for split, rel in entry["files"].items()}
    manifest["tokenizer"] = {"path": Path(tokenizer_dir).relative_to(out_dir).as_posix()
                             if Path(tokenizer_dir).is_relative_to(out_dir) else str(tokenizer_dir),
                             "vocab_size": load_tokenizer(tokenizer_dir).get_vocab_size()}
    write_manifest(out_dir, manifest)
    return manifest


def build(out_dir: Path, *, seed: int = 0, scale: float = 1.0, vocab_size: int = 1024) -> dict[str, Any]:
    """Everything the CLI does: generate, train the tokenizer into out_dir/tokenizer, count tokens."""
    manifest = generate(out_dir, seed=seed, scale=scale)
    from runtime.tokenizer import train_tokenizer  # needs `tokenizers`; generating does not

    tokenizer_dir = train_tokenizer(tokenizer_files(out_dir, manifest), Path(out_dir) / "tokenizer", vocab_size)
    return add_token_counts(out_dir, manifest, tokenizer_dir)


def summary(manifest: dict[str, Any]) -> str:
    """A table: set, split, documents, characters, tokens."""
    rows = [("set", "split", "docs", "chars", "tokens")]
    for name, entry in manifest["sets"].items():
        for split in entry["files"]:
            tokens = entry.get("tokens", {}).get(split)
            rows.append((name, split, f"{entry['documents'][split]:,}", f"{entry['characters'][split]:,}",
                         "?" if tokens is None else f"{tokens:,}"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths)] + lines[1:])


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints the usage too)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(prog="python -m runtime.toyworld", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="folder to write the toy world into")
    parser.add_argument("--seed", type=int, default=0, help="random seed (>= 0), default 0")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies document counts, default 1.0")
    parser.add_argument("--vocab-size", type=int, default=1024, help="tokenizer vocabulary size, default 1024")
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error(f"--seed must be >= 0 (got {args.seed})")
    if not (math.isfinite(args.scale) and 0 < args.scale <= 100):
        parser.error(f"--scale must be in (0, 100] (got {args.scale})")
    if not 261 <= args.vocab_size <= 1 << 20:
        parser.error(f"--vocab-size must be in [261, {1 << 20}] (got {args.vocab_size})")
    if args.out_dir.exists() and not args.out_dir.is_dir():
        parser.error(f"{args.out_dir} exists and is not a folder")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    start = time.perf_counter()
    try:
        manifest = build(args.out_dir, seed=args.seed, scale=args.scale, vocab_size=args.vocab_size)
    except (OSError, ValueError) as e:
        print(f"python -m runtime.toyworld: error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:
        print(f"python -m runtime.toyworld: error: training the tokenizer needs the runtime "
              f"dependencies (pip install -e '.[runtime]'): {e}", file=sys.stderr)
        return 1
    print(summary(manifest))
    print(f"wrote {args.out_dir} in {time.perf_counter() - start:.1f} s (seed {args.seed}, scale {args.scale})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
