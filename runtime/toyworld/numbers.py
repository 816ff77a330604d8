"""Numbers as English words (412 -> "four hundred twelve") and random numbers for the toy world."""
from __future__ import annotations

import random



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


def word_components(n: int) -> list[tuple[str, int]]:
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


def random_number(rng: random.Random) -> int:
    """A number for the words skill: small ones often, up to six digits sometimes."""
    kind = rng.random()
    if kind < 0.3:
        return rng.randint(0, 20)
    if kind < 0.55:
        return rng.randint(21, 99)
    if kind < 0.8:
        return rng.randint(100, 999)
    return rng.randint(1000, 999_999)


