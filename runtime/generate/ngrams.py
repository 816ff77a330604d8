"""Text normalisation and n-gram decontamination of training data against eval sets.

A text is compared as its word sequence (`words`): Unicode NFKC, lowercased, split into runs of letters/digits
and single punctuation/symbol characters, whitespace dropped. So "What is 361+1?" and "what is 361 + 1 ?" are
the same sequence, and case, spacing and full-width forms never hide an overlap.

`EvalIndex` holds every eval item's word n-grams (n = 13 by default, the GPT-3 / open-instruct convention) in one
dict from n-gram to the items that contain it. A training text is contaminated by an item when one of the item's
n-grams occurs contiguously in the text. An item shorter than n words has no n-gram; it counts only when its whole
word sequence occurs contiguously (so "4 of its 5 words" or "its words in another order" do not). Short items
are kept per length ({length: {words: items}}) with, per first word, the lengths of the short items that start
with it; the text's n-grams are looked up in one pass, and its short candidates in a second pass that builds a
tuple only where a word starts some short item. A text costs O(len(text)) dict lookups, whatever the number of
eval items (at most one tuple per distinct short length at a position, in the worst case).

`count_contamination` (or `ContaminationCounts`, to feed rows one at a time) turns a stream of
(dataset, row index, text) into per-dataset counts as plain JSON-serialisable dicts.

    from runtime.generate.ngrams import EvalIndex, count_contamination
    index = EvalIndex({"gsm8k": gsm8k_questions, "math": math_problems}, n=13)
    index.matches("...")            # [("gsm8k", 41), ...]: the (eval set, item index) pairs hit
    report = count_contamination(index, ((name, i, row["text"]) for name, rows in data for i, row in ...))
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

# A run of word characters, or one character that is neither a word character nor whitespace.
_TOKEN = re.compile(r"\w+|[^\w\s]")

Gram = tuple[str, ...]


def words(text: str) -> list[str]:
    """The normalised word tokens of `text`: NFKC, lowercase, `\\w+` runs and single punctuation/symbols."""
    return _TOKEN.findall(unicodedata.normalize("NFKC", text).lower())


def ngrams(tokens: Sequence[str], n: int) -> Iterator[Gram]:
    """The contiguous n-grams of `tokens`, in order (none when there are fewer than n tokens)."""
    return zip(*(tokens[i:] for i in range(n)))


class EvalIndex:
    """Every eval item's word n-grams, to find which items a training text overlaps.

    Items are numbered in the order given (eval sets in dict order, items in list order); `matches` reports them
    back as (eval set, index within that set). An item with no words at all is skipped: it would match every text.
    """

    def __init__(self, evals: dict[str, Sequence[str]], n: int = 13) -> None:
        if n < 1:
            raise ValueError(f"n must be >= 1 (got {n})")
        self.n = n
        self.items: list[tuple[str, int]] = []
        self._grams: dict[Gram, set[int]] = {}
        self._short: dict[int, dict[Gram, set[int]]] = {}
        self._short_starts: dict[str, list[int]] = {}  # first word -> lengths of the short items it starts
        for name, texts in evals.items():
            for index, text in enumerate(texts):
                self._add(name, index, text)

    def _add(self, name: str, index: int, text: str) -> None:
        tokens = words(text)
        if not tokens:
            return
        item = len(self.items)
        self.items.append((name, index))
        if len(tokens) < self.n:
            self._short.setdefault(len(tokens), {}).setdefault(tuple(tokens), set()).add(item)
            starts = self._short_starts.setdefault(tokens[0], [])
            if len(tokens) not in starts:
                starts.append(len(tokens))
            return
        for gram in ngrams(tokens, self.n):
            self._grams.setdefault(gram, set()).add(item)

    def _hit_ids(self, tokens: Sequence[str]) -> set[int]:
        hits: set[int] = set()
        for gram in ngrams(tokens, self.n):
            ids = self._grams.get(gram)
            if ids:
                hits |= ids
        if self._short:
            hits |= self._short_hits(tokens)
        return hits

    def _short_hits(self, tokens: Sequence[str]) -> set[int]:
        hits: set[int] = set()
        for start, token in enumerate(tokens):
            for length in self._short_starts.get(token, ()):
                ids = self._short[length].get(tuple(tokens[start:start + length]))
                if ids:
                    hits |= ids
        return hits

    def matches(self, text: str) -> list[tuple[str, int]]:
        """The (eval set, item index) pairs with an n-gram (or, when short, their whole text) inside `text`."""
        return [self.items[item] for item in sorted(self._hit_ids(words(text)))]

    def contaminated(self, text: str) -> bool:
        """Whether any eval item overlaps `text` (see `matches`)."""
        return bool(self._hit_ids(words(text)))

    @property
    def short_lengths(self) -> list[int]:
        """The distinct word counts of the items shorter than n."""
        return sorted(self._short)


@dataclass
class _DatasetCounts:
    rows: int = 0
    contaminated: list[int] = field(default_factory=list)
    eval_rows: dict[str, int] = field(default_factory=dict)
    eval_items: dict[str, set[int]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        by_eval = {name: {"rows": self.eval_rows[name], "items": len(self.eval_items[name])}
                   for name in sorted(self.eval_rows)}
        return {"rows": self.rows, "contaminated_rows": len(self.contaminated),
                "contaminated": sorted(self.contaminated), "by_eval": by_eval}


class ContaminationCounts:
    """Per-dataset contamination counts, fed one (dataset, row index, text) at a time.

    `as_dict()` gives, per dataset: `rows` scanned, `contaminated_rows` and the sorted `contaminated` row indices,
    and `by_eval`: per eval set hit, `rows` (training rows that overlap it) and `items` (distinct items hit).
    """

    def __init__(self, index: EvalIndex) -> None:
        self.index = index
        self._datasets: dict[str, _DatasetCounts] = {}

    def add(self, dataset: str, row: int, text: str) -> list[tuple[str, int]]:
        """Scan one row; returns its matches, so a caller can also drop it."""
        counts = self._datasets.setdefault(dataset, _DatasetCounts())
        counts.rows += 1
        hits = self.index.matches(text)
        if hits:
            counts.contaminated.append(row)
        for name in sorted({name for name, _ in hits}):
            counts.eval_rows[name] = counts.eval_rows.get(name, 0) + 1
        for name, item in hits:
            counts.eval_items.setdefault(name, set()).add(item)
        return hits

    def as_dict(self) -> dict[str, dict[str, object]]:
        return {name: self._datasets[name].as_dict() for name in sorted(self._datasets)}


def count_contamination(index: EvalIndex, rows: Iterable[tuple[str, int, str]]) -> dict[str, dict[str, object]]:
    """Per-dataset contamination counts of (dataset, row index, text) rows; see `ContaminationCounts`."""
    counts = ContaminationCounts(index)
    for dataset, row, text in rows:
        counts.add(dataset, row, text)
    return counts.as_dict()
