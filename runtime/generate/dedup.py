"""Exact and near-duplicate removal over a list of texts; the first occurrence wins and order is kept.

Both passes read a text as its normalised word sequence (`runtime.generate.ngrams.words`), so case, spacing and
Unicode forms never make two copies look different.

- Exact: `exact_key` is the sha1 of the word sequence; a text whose key was seen before is dropped.
- Near: word shingles of size k (a text shorter than k is one shingle: its whole sequence), each hashed to 64 bits
  with blake2b (stable across processes, unlike the salted built-in `hash`). A MinHash signature of `num_perm`
  values comes from the family h -> (a*h + b) mod (2^61 - 1), with (a, b) drawn from `random.Random(seed)`.
  LSH splits the signature into `bands` x `rows`; texts that agree on a whole band are candidates, and a candidate
  counts only when the exact Jaccard of the two shingle sets is >= `threshold`. So MinHash only decides which
  pairs are compared: it can miss a pair (rarely: the banding is chosen for >= 99 % recall at the threshold) but
  never drops a text below the threshold.

A text is compared with the texts kept so far, not with the dropped ones, so a chain A ~ B ~ C where C is far from
A keeps C: every dropped text names a kept partner in `DedupResult.near`.

    from runtime.generate.dedup import dedup
    result = dedup(texts, threshold=0.8)
    texts = [texts[i] for i in result.keep]
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass
from typing import Sequence

from runtime.generate.ngrams import words

MERSENNE = (1 << 61) - 1
# Probability that a pair exactly at the threshold becomes a candidate, which the banding is chosen to reach.
RECALL = 0.99


def exact_key(text: str) -> str:
    """The sha1 (hex) of the normalised word sequence: equal for texts that differ only in case or spacing."""
    return _sha1(words(text))


def _sha1(tokens: Sequence[str]) -> str:
    return hashlib.sha1(" ".join(tokens).encode("utf-8")).hexdigest()


def _hash64(shingle: tuple[str, ...]) -> int:
    # Tokens never contain whitespace, so joining on a space cannot make two shingles collide.
    return int.from_bytes(hashlib.blake2b(" ".join(shingle).encode("utf-8"), digest_size=8).digest(), "big")


def shingles(text: str, k: int = 5) -> frozenset[int]:
    """The 64-bit hashes of the text's k-word shingles (the whole word sequence when it has fewer than k words)."""
    return _shingles(words(text), k)


def _shingles(tokens: Sequence[str], k: int) -> frozenset[int]:
    if len(tokens) < k:
        return frozenset({_hash64(tuple(tokens))})
    return frozenset(_hash64(tuple(tokens[i:i + k])) for i in range(len(tokens) - k + 1))


def jaccard(a: frozenset[int], b: frozenset[int]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def permutations(num_perm: int, seed: int) -> list[tuple[int, int]]:
    """The (a, b) pairs of the MinHash family h -> (a*h + b) mod 2^61-1, deterministic in `seed`."""
    rng = random.Random(seed)
    return [(rng.randrange(1, MERSENNE), rng.randrange(0, MERSENNE)) for _ in range(num_perm)]


def signature(hashes: frozenset[int], perms: Sequence[tuple[int, int]]) -> tuple[int, ...]:
    """The MinHash signature of a shingle-hash set: per permutation, the least permuted value."""
    return tuple(min((a * h + b) % MERSENNE for h in hashes) for a, b in perms)


def choose_bands(num_perm: int, threshold: float, recall: float = RECALL) -> tuple[int, int]:
    """(bands, rows) with bands x rows = num_perm: the most rows (fewest spurious candidates) for which a pair at
    `threshold` Jaccard is a candidate with probability >= `recall`, i.e. 1 - (1 - t^rows)^bands >= recall."""
    for rows in sorted((r for r in range(1, num_perm + 1) if num_perm % r == 0), reverse=True):
        bands = num_perm // rows
        if 1 - (1 - threshold ** rows) ** bands >= recall:
            return bands, rows
    return num_perm, 1


@dataclass(frozen=True)
class DedupResult:
    """`keep`: indices kept, in order. `exact`: indices dropped as exact duplicates of an earlier text.
    `near`: (dropped index, the kept index it near-duplicates)."""

    keep: list[int]
    exact: list[int]
    near: list[tuple[int, int]]

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "near": [list(pair) for pair in self.near]}


class _NearIndex:
    """The kept texts' shingle sets and LSH buckets: finds the earliest kept text a new one near-duplicates."""

    def __init__(self, threshold: float, num_perm: int, seed: int) -> None:
        self.threshold = threshold
        self.perms = permutations(num_perm, seed)
        bands, self.rows = choose_bands(num_perm, threshold)
        self.buckets: list[dict[tuple[int, ...], list[int]]] = [{} for _ in range(bands)]
        self.sets: dict[int, frozenset[int]] = {}

    def _bands(self, sig: tuple[int, ...]) -> list[tuple[int, ...]]:
        return [sig[i * self.rows:(i + 1) * self.rows] for i in range(len(self.buckets))]

    def find(self, hashes: frozenset[int], sig: tuple[int, ...]) -> int | None:
        candidates: set[int] = set()
        for bucket, band in zip(self.buckets, self._bands(sig)):
            candidates.update(bucket.get(band, ()))
        for kept in sorted(candidates):
            if jaccard(hashes, self.sets[kept]) >= self.threshold:
                return kept
        return None

    def add(self, index: int, hashes: frozenset[int], sig: tuple[int, ...]) -> None:
        self.sets[index] = hashes
        for bucket, band in zip(self.buckets, self._bands(sig)):
            bucket.setdefault(band, []).append(index)


def dedup(texts: Sequence[str], *, threshold: float = 0.8, shingle: int = 5, num_perm: int = 64,
          seed: int = 0) -> DedupResult:
    """Drop exact duplicates, then texts whose shingle Jaccard with an earlier kept text is >= `threshold`."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1] (got {threshold})")
    if shingle < 1 or num_perm < 1:
        raise ValueError(f"shingle and num_perm must be >= 1 (got {shingle}, {num_perm})")
    seen: set[str] = set()
    near_index = _NearIndex(threshold, num_perm, seed)
    keep: list[int] = []
    exact: list[int] = []
    near: list[tuple[int, int]] = []
    for index, text in enumerate(texts):
        tokens = words(text)
        key = _sha1(tokens)
        if key in seen:
            exact.append(index)
            continue
        seen.add(key)
        hashes = _shingles(tokens, shingle)
        sig = signature(hashes, near_index.perms)
        partner = near_index.find(hashes, sig)
        if partner is None:
            keep.append(index)
            near_index.add(index, hashes, sig)
        else:
            near.append((index, partner))
    return DedupResult(keep=keep, exact=exact, near=near)
