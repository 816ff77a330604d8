"""The words, code and plain-text pretraining sources of the toy world."""
from __future__ import annotations

import random
from typing import Any, Callable

from runtime.toyworld.numbers import random_number, word_components, number_to_words


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
    n = random_number(rng)
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


def words_doc(rng: random.Random) -> tuple[str, dict[str, Any]]:
    text = "\n".join(_words_line(rng) for _ in range(rng.randint(4, 9)))
    return text, {"text": text}


def words_question(rng: random.Random) -> tuple[str, str, int]:
    """A words question with a worked solution: (question, solution, answer)."""
    if rng.random() < 0.5:
        n = random_number(rng)
        comps = word_components(n)
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


def code_doc(rng: random.Random) -> tuple[str, dict[str, Any]]:
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


def text_doc(rng: random.Random) -> tuple[str, dict[str, Any]]:
    text = "\n\n".join(_paragraph(rng) for _ in range(rng.randint(1, 4)))
    return text, {"text": text}


