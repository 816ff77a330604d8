"""Time n-gram decontamination: `EvalIndex.matches` over synthetic documents against synthetic eval items, and a
naive baseline (per document, a set intersection with every eval item's n-grams) in the same process.

Documents are 60 random words; about 1 % carry a 13-word span of a long eval item or a whole short one. The
baseline is run on the first `--baseline-docs` documents only (it is O(items) per document) and must find the
same matches. Prints docs/s for both and their ratio.

Run: `python bench/decontam.py [--docs 50000] [--items 500] [--baseline-docs 2000] [--n 13]`.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runtime.generate.ngrams import EvalIndex, ngrams, words  # noqa: E402

Matcher = Callable[[str], list[tuple[str, int]]]


def synthetic(n_docs: int, n_items: int, n: int, seed: int) -> tuple[dict[str, list[str]], list[str]]:
    """Eval sets (4 % of items shorter than n) and 60-word documents, ~1 % of them contaminated."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(20_000)]
    items: list[list[str]] = [rng.choices(vocab, k=rng.randint(n, 80) if i % 25 else rng.randint(4, n - 1))
                              for i in range(n_items)]
    texts = [" ".join(t) for t in items]
    evals = {"set_a": texts[: n_items // 2], "set_b": texts[n_items // 2:]}
    docs = []
    for _ in range(n_docs):
        doc = rng.choices(vocab, k=60)
        if rng.random() < 0.01:
            item = rng.choice(items)
            span = item if len(item) < n else item[(s := rng.randint(0, len(item) - n)): s + n]
            at = rng.randint(0, 60 - len(span))
            doc[at:at + len(span)] = span
        docs.append(" ".join(doc))
    return evals, docs


def naive_matcher(evals: dict[str, Sequence[str]], n: int) -> Matcher:
    """Per document: its k-gram sets, then one set intersection per eval item (k = n, or the item's length)."""
    items = []
    for name, texts in evals.items():
        for index, text in enumerate(texts):
            tokens = words(text)
            k = min(n, len(tokens))
            items.append(((name, index), k, set(ngrams(tokens, k))))
    lengths = sorted({k for _, k, _ in items})

    def match(text: str) -> list[tuple[str, int]]:
        tokens = words(text)
        doc = {k: set(ngrams(tokens, k)) for k in lengths}
        return [key for key, k, grams in items if grams & doc[k]]
    return match


def rate(match: Matcher, docs: Sequence[str]) -> tuple[float, list[list[tuple[str, int]]]]:
    start = time.perf_counter()
    found = [match(doc) for doc in docs]
    return len(docs) / (time.perf_counter() - start), found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=50_000)
    ap.add_argument("--items", type=int, default=500)
    ap.add_argument("--baseline-docs", type=int, default=2_000)
    ap.add_argument("--n", type=int, default=13)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    evals, docs = synthetic(args.docs, args.items, args.n, args.seed)
    start = time.perf_counter()
    index = EvalIndex(evals, n=args.n)
    build = time.perf_counter() - start
    fast, found = rate(index.matches, docs)
    subset = docs[: args.baseline_docs]
    slow, naive_found = rate(naive_matcher(evals, args.n), subset)
    assert naive_found == found[: len(subset)], "the index and the baseline disagree"
    hits = sum(bool(f) for f in found)
    print(f"{len(docs)} docs x 60 words, {len(index.items)} eval items (short lengths {index.short_lengths}), "
          f"n={args.n}: {hits} contaminated")
    print(f"EvalIndex: built in {build:.2f} s, {fast:,.0f} docs/s")
    print(f"naive:     {slow:,.0f} docs/s (first {len(subset)} docs, same matches)")
    print(f"speedup:   {fast / slow:.1f}x")


if __name__ == "__main__":
    main()
