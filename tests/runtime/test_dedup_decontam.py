"""Dedup (runtime.generate.dedup) and n-gram decontamination (runtime.generate.ngrams) on crafted texts.

Texts are built from disjoint made-up vocabularies, so every overlap is one the test put there, and the true
Jaccard of two texts is computed here from their word shingles to check both sides of the threshold.
Run: `python -m pytest tests/runtime/test_dedup_decontam.py -q -p no:cacheprovider` (about a second).
"""
from __future__ import annotations

import json
import random

import pytest

from runtime.generate.dedup import DedupResult, choose_bands, dedup, exact_key
from runtime.generate.ngrams import EvalIndex, count_contamination, words


def vocab(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(count)]


def true_jaccard(a: str, b: str, k: int = 5) -> float:
    def grams(text: str) -> set[tuple[str, ...]]:
        tokens = words(text)
        return {tuple(tokens[i:i + k]) for i in range(len(tokens) - k + 1)} or {tuple(tokens)}
    sa, sb = grams(a), grams(b)
    return len(sa & sb) / len(sa | sb)


def replaced(tokens: list[str], at: dict[int, str]) -> str:
    out = list(tokens)
    for position, word in at.items():
        out[position] = word
    return " ".join(out)


BASE = vocab("base", 40)
BASE_TEXT = " ".join(BASE)


# --- normalisation -------------------------------------------------------------------------------------------

def test_words_splits_punctuation_and_normalises() -> None:
    assert words("361+1?") == ["361", "+", "1", "?"]
    assert words("  Hello,\tWORLD!\n") == ["hello", ",", "world", "!"]
    assert words("３６１＋１") == ["361", "+", "1"]  # full-width forms fold under NFKC
    assert words("snake_case x") == ["snake_case", "x"]
    assert words("") == []


# --- exact dedup ---------------------------------------------------------------------------------------------

def test_exact_duplicates_differing_in_case_and_spacing_are_dropped() -> None:
    texts = ["Hello  World", "something else entirely", "hello world", "HELLO\nworld ", "Hello world!",
             "Something   ELSE entirely"]
    assert exact_key(texts[0]) == exact_key(texts[2]) == exact_key(texts[3])
    assert exact_key(texts[0]) != exact_key(texts[4])
    assert exact_key("ab c") != exact_key("a bc")
    result = dedup(texts)
    assert result == DedupResult(keep=[0, 1, 4], exact=[2, 3, 5], near=[])


def test_distinct_texts_are_all_kept_in_order() -> None:
    texts = [" ".join(vocab(f"d{j}x", 30)) for j in range(6)][::-1]
    assert dedup(texts).keep == list(range(6))


# --- near dedup ----------------------------------------------------------------------------------------------

def test_one_word_changed_is_a_near_duplicate_of_the_right_text() -> None:
    other = " ".join(vocab("other", 40))
    half = " ".join(BASE[:20] + vocab("half", 20))
    variant = replaced(BASE, {38: "changed"})
    assert true_jaccard(BASE_TEXT, variant) >= 0.8
    assert true_jaccard(BASE_TEXT, half) < 0.8
    result = dedup([other, BASE_TEXT, half, variant])
    assert result.keep == [0, 1, 2]
    assert result.near == [(3, 1)]
    assert result.exact == []


def test_threshold_is_respected_on_both_sides() -> None:
    variant = replaced(BASE, {20: "changed"})  # mid-text: 5 of 36 shingles differ
    j = true_jaccard(BASE_TEXT, variant)
    assert j == pytest.approx(31 / 41)
    assert dedup([BASE_TEXT, variant], threshold=j - 0.01).near == [(1, 0)]
    assert dedup([BASE_TEXT, variant], threshold=j + 0.01).keep == [0, 1]
    assert dedup([BASE_TEXT, variant], threshold=j).near == [(1, 0)]  # >= threshold counts
    assert dedup([BASE_TEXT, variant]).keep == [0, 1]  # below the default 0.8


def test_texts_are_compared_with_kept_texts_only() -> None:
    a = BASE_TEXT
    b = replaced(BASE, {39: "bee"})
    c = replaced(BASE, {39: "bee", 1: "cee"})
    threshold = 0.87
    assert true_jaccard(a, b) >= threshold and true_jaccard(b, c) >= threshold
    assert true_jaccard(a, c) < threshold
    result = dedup([a, b, c], threshold=threshold)
    assert result.keep == [0, 2]
    assert result.near == [(1, 0)]


def test_a_text_near_two_kept_texts_names_the_earliest() -> None:
    a = BASE_TEXT
    b = replaced(BASE, {0: "bee", 39: "bee"})
    c = replaced(BASE, {0: "bee"})
    threshold = 0.9
    assert true_jaccard(a, b) < threshold
    assert true_jaccard(a, c) >= threshold and true_jaccard(b, c) >= threshold
    result = dedup([a, b, c], threshold=threshold)
    assert result.keep == [0, 1]
    assert result.near == [(2, 0)]


def test_short_texts_are_one_shingle() -> None:
    result = dedup(["a b c", "a b c d", "x y z w v u"], shingle=5)
    assert result.keep == [0, 1, 2]


def test_dedup_is_deterministic_and_json_ready() -> None:
    texts = [BASE_TEXT, replaced(BASE, {39: "z"}), BASE_TEXT.upper(), " ".join(vocab("q", 40))]
    first = dedup(texts, seed=3)
    assert first == dedup(texts, seed=3)
    assert first == DedupResult(keep=[0, 3], exact=[2], near=[(1, 0)])
    assert json.loads(json.dumps(first.as_dict())) == {"keep": [0, 3], "exact": [2], "near": [[1, 0]]}


@pytest.mark.parametrize("num_perm,threshold", [(64, 0.8), (64, 0.5), (128, 0.9), (7, 0.8)])
def test_banding_covers_the_signature_and_reaches_the_recall(num_perm: int, threshold: float) -> None:
    bands, rows = choose_bands(num_perm, threshold)
    assert bands * rows == num_perm
    assert 1 - (1 - threshold ** rows) ** bands >= 0.99


def test_bad_threshold_names_the_option() -> None:
    with pytest.raises(ValueError, match="threshold"):
        dedup(["a"], threshold=0.0)


# --- decontamination -----------------------------------------------------------------------------------------

ITEM = vocab("ev", 30)
FILL = vocab("tr", 80)


def with_span(span: list[str], at: int = 20) -> str:
    return " ".join(FILL[:at] + span + FILL[at:])


@pytest.mark.parametrize("n", [13, 8])
def test_sharing_n_minus_one_words_is_clean_and_n_words_contaminates(n: int) -> None:
    index = EvalIndex({"set": [" ".join(ITEM)]}, n=n)
    for start in (0, 5, 30 - n):
        assert not index.contaminated(with_span(ITEM[start:start + n - 1]))
        assert index.matches(with_span(ITEM[start:start + n])) == [("set", 0)]
    # at the very start and end of the training text
    assert index.contaminated(" ".join(ITEM[:n] + FILL))
    assert index.contaminated(" ".join(FILL + ITEM[-n:]))
    assert not index.contaminated(" ".join(ITEM[: n - 1] + FILL + ITEM[n - 1: 2 * n - 2]))


def test_short_item_counts_only_whole_and_contiguous() -> None:
    short = ["alpha", "beta", "gamma", "delta", "epsilon"]
    index = EvalIndex({"short": [" ".join(short)]}, n=13)
    assert index.short_lengths == [5]
    assert index.matches(with_span(short)) == [("short", 0)]
    assert index.contaminated(" ".join(short))
    assert not index.contaminated(with_span(short[:4]))
    assert not index.contaminated(with_span(short[1:]))
    assert not index.contaminated(with_span(short[::-1]))
    assert not index.contaminated(with_span(short[:2] + ["zeta"] + short[2:]))
    assert not index.contaminated(with_span(short[:3]) + " " + " ".join(short[3:]))


def test_short_items_sharing_a_first_word_and_at_the_end_of_a_text() -> None:
    index = EvalIndex({"s": ["alpha beta gamma", "alpha beta gamma delta epsilon", "beta gamma delta"]}, n=13)
    assert index.matches("x y alpha beta gamma") == [("s", 0)]
    assert index.matches("x y alpha beta gamma delta") == [("s", 0), ("s", 2)]
    assert index.matches("alpha beta gamma delta epsilon") == [("s", 0), ("s", 1), ("s", 2)]


def contains(tokens: list[str], part: list[str]) -> bool:
    return any(tokens[i:i + len(part)] == part for i in range(len(tokens) - len(part) + 1))


def test_matches_agrees_with_a_brute_force_scan() -> None:
    rng = random.Random(0)
    alphabet = ["a", "b", "c", "d", "e"]
    n = 4
    items = [rng.choices(alphabet, k=rng.randint(1, 9)) for _ in range(40)]
    index = EvalIndex({"x": [" ".join(item) for item in items]}, n=n)
    for _ in range(300):
        doc = rng.choices(alphabet, k=rng.randint(0, 12))
        expected = [("x", i) for i, item in enumerate(items)
                    if (contains(doc, item) if len(item) < n
                        else any(contains(doc, item[j:j + n]) for j in range(len(item) - n + 1)))]
        assert index.matches(" ".join(doc)) == expected


def test_item_of_exactly_n_words_and_of_n_minus_one() -> None:
    index = EvalIndex({"s": [" ".join(ITEM[:13]), " ".join(ITEM[13:25])]}, n=13)
    assert index.short_lengths == [12]
    assert index.matches(with_span(ITEM[:13])) == [("s", 0)]
    assert not index.contaminated(with_span(ITEM[:12]))
    assert index.matches(with_span(ITEM[13:25])) == [("s", 1)]
    assert not index.contaminated(with_span(ITEM[13:24]))


def test_punctuation_and_case_differences_still_match() -> None:
    question = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May."
    short = "What is 361+1?"
    index = EvalIndex({"gsm": [question, short]}, n=8)
    assert index.matches("Intro. NATALIA sold clips to 48 of her FRIENDS in april , and then...") == [("gsm", 0)]
    assert index.matches("quiz: what   IS 361 + 1 ? answer 362") == [("gsm", 1)]
    assert index.matches("what is ３６１＋１?") == [("gsm", 1)]
    assert not index.contaminated("what is 361 + 1 ! answer")
    assert not index.contaminated("Natalia sold clips to 48 of her")  # 7 words: one short of n


def test_matches_reports_every_item_hit_and_skips_empty_items() -> None:
    shared = ITEM[:13]
    index = EvalIndex({"a": ["", " ".join(ITEM)], "b": [" ".join(vocab("bb", 20)), " ".join(shared + ITEM[::-1])]})
    assert index.items == [("a", 1), ("b", 0), ("b", 1)]
    assert index.matches(with_span(shared)) == [("a", 1), ("b", 1)]
    assert index.matches(" ".join(FILL)) == []


def test_per_dataset_and_per_eval_counts() -> None:
    gsm = [" ".join(vocab("gsm", 30)), " ".join(vocab("gsmb", 30)), "what is 2+2?"]
    math = [" ".join(vocab("mth", 30))]
    index = EvalIndex({"gsm8k": gsm, "math": math}, n=13)
    clean = " ".join(FILL)
    rows = [
        ("sft", 0, clean),
        ("sft", 1, with_span(vocab("gsm", 13))),                           # gsm8k item 0
        ("sft", 2, with_span(vocab("gsm", 30)[5:18] + vocab("mth", 14))),  # gsm8k 0 and math 0
        ("sft", 3, "Q: What is 2 + 2 ? A: 4"),                             # gsm8k item 2 (short)
        ("sft", 4, with_span(vocab("gsmb", 12))),                          # 12 words: clean
        ("web", 0, clean),
        ("web", 7, with_span(vocab("gsmb", 30)[10:25])),                   # gsm8k item 1
        ("web", 9, "what is 2 + 3?"),
    ]
    report = count_contamination(index, rows)
    assert report == {
        "sft": {"rows": 5, "contaminated_rows": 3, "contaminated": [1, 2, 3],
                "by_eval": {"gsm8k": {"rows": 3, "items": 2}, "math": {"rows": 1, "items": 1}}},
        "web": {"rows": 3, "contaminated_rows": 1, "contaminated": [7],
                "by_eval": {"gsm8k": {"rows": 1, "items": 1}}},
    }
    assert json.loads(json.dumps(report)) == report


def test_bad_n_is_refused() -> None:
    with pytest.raises(ValueError, match="n must be"):
        EvalIndex({"s": ["x"]}, n=0)
