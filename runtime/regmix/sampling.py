"""Mixture sampling for RegMix: the swarm's mixtures and the solve's candidates come from one sampler.

A mixture is a weight per source (summing to 1). The sampler draws from a Dirichlet centred on a prior:

- prior "tokens": weights ∝ tokens^(1/temperature) (temperature 1 = token-proportional, higher flattens it);
  prior "uniform": 1/K each;
- a concentration strength c per mixture, log-uniform in the sampling's [low, high] range, and
  alpha = c × prior (RegMix's convention: small c gives nearly one-source mixtures, large c mixtures near the
  prior; the range mixes both, so the swarm covers the corners and the middle of the simplex);
- rejection of mixtures outside the per-source [min, max] bounds (the compiler has already folded the epoch
  limits into them). Too low an acceptance rate is a `HopelessBounds` error that says which bounds reject most.

Determinism: `rng_for(seed, stream)` gives one numpy Generator per (seed, stream) ("swarm", "solve"); the whole
swarm is drawn from it in one call, in chunks whose sizes depend only on counts, so every array task computes the
same swarm and task i takes mixture i.

    from runtime.regmix.sampling import Sampler, rng_for
    sampler = Sampler.from_config(sources, sampling, bounds)
    weights = sampler.sample(24, rng_for(0, "swarm"))       # (24, K) array, columns = sampler.sources

Test: `python -m pytest tests/runtime/test_regmix.py -q -k sampl`.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

STREAMS = ("swarm", "solve")
# Give up when, after this many draws, fewer than the wanted mixtures were accepted (or the rate is hopeless).
MIN_DRAWS_BEFORE_GIVING_UP = 100_000
MIN_ACCEPTANCE = 1e-3
MAX_DRAWS_FACTOR = 1_000  # never more than n / MIN_ACCEPTANCE draws


class HopelessBounds(ValueError):
    """The bounds reject (nearly) every mixture the prior produces."""


def rng_for(seed: int, stream: str) -> np.random.Generator:
    """The generator of one stream ("swarm" or "solve") of a seed: independent streams, reproducible."""
    if stream not in STREAMS:
        raise ValueError(f"unknown sampling stream {stream!r} (one of {', '.join(STREAMS)})")
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(stream.encode())])


def prior_weights(tokens: Mapping[str, float], prior: str = "tokens", temperature: float = 1.0) -> dict[str, float]:
    """The Dirichlet's centre: tokens^(1/temperature) normalised, or uniform."""
    names = list(tokens)
    if prior == "uniform":
        return {name: 1.0 / len(names) for name in names}
    if prior != "tokens":
        raise ValueError(f"sampling.prior {prior!r}: one of tokens, uniform")
    scaled = np.array([float(tokens[n]) for n in names]) ** (1.0 / float(temperature))
    scaled /= scaled.sum()
    return dict(zip(names, scaled.tolist()))


def natural_weights(tokens: Mapping[str, float]) -> dict[str, float]:
    """The token-proportional mix (what training on everything as it comes would see)."""
    return prior_weights(tokens, "tokens", 1.0)


@dataclass(frozen=True)
class Sampler:
    """Dirichlet(c × prior) with c log-uniform in `concentration`, rejecting mixtures outside [low, high]."""

    sources: tuple[str, ...]
    prior: np.ndarray
    concentration: tuple[float, float]
    low: np.ndarray
    high: np.ndarray

    @classmethod
    def from_config(cls, tokens: Mapping[str, float], sampling: Mapping[str, Any],
                    bounds: Mapping[str, Sequence[float]] | None = None) -> "Sampler":
        """tokens: {source: tokens} (or the source specs, whose "tokens" is read); sampling: the plan's block."""
        counts = {n: float(v["tokens"] if isinstance(v, Mapping) else v) for n, v in tokens.items()}
        distribution = sampling.get("distribution", "dirichlet")
        if distribution != "dirichlet":
            raise ValueError(f"sampling.distribution {distribution!r}: only dirichlet is supported")
        centre = prior_weights(counts, sampling.get("prior", "tokens"), float(sampling.get("temperature", 1.0)))
        names = tuple(counts)
        bounds = bounds or {}
        unknown = sorted(set(bounds) - set(names))
        if unknown:
            raise ValueError(f"bounds name unknown sources {unknown} (sources: {', '.join(names)})")
        low = np.array([float(bounds.get(n, (0.0, 1.0))[0]) for n in names])
        high = np.array([float(bounds.get(n, (0.0, 1.0))[1]) for n in names])
        lo, hi = (float(x) for x in sampling.get("concentration", (0.1, 5.0)))
        if not 0 < lo <= hi:
            raise ValueError(f"sampling.concentration [{lo}, {hi}]: need 0 < low <= high")
        return cls(names, np.array([centre[n] for n in names]), (lo, hi), low, high)

    def _draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        lo, hi = self.concentration
        strength = np.exp(rng.uniform(np.log(lo), np.log(hi), size=(n, 1)))
        gammas = rng.standard_gamma(strength * self.prior[None, :])
        total = gammas.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            return gammas / total  # a row whose gammas all underflowed is NaN and gets rejected

    def accepts(self, weights: np.ndarray) -> np.ndarray:
        """Which rows are finite and within every bound (a small tolerance for rounding)."""
        eps = 1e-9
        finite = np.isfinite(weights).all(axis=1)
        inside = ((weights >= self.low - eps) & (weights <= self.high + eps)).all(axis=1)
        return finite & inside

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n accepted mixtures, shape (n, K), in the order drawn; `HopelessBounds` when the bounds reject almost all."""
        return self.sample_counted(n, rng)[0]

    def sample_counted(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """`sample`, and how many mixtures were drawn to accept n."""
        kept: list[np.ndarray] = []
        have = drawn = 0
        max_draws = max(MIN_DRAWS_BEFORE_GIVING_UP, int(n * MAX_DRAWS_FACTOR))
        while have < n:
            rate = have / drawn if drawn else 1.0
            chunk = int(min(max(1024, 1.2 * (n - have) / max(rate, 0.01)), 1_000_000))
            batch = self._draw(chunk, rng)
            ok = batch[self.accepts(batch)]
            kept.append(ok)
            have += len(ok)
            drawn += chunk
            if have < n and drawn >= MIN_DRAWS_BEFORE_GIVING_UP and (have / drawn < MIN_ACCEPTANCE or drawn >= max_draws):
                raise HopelessBounds(self._hopeless_message(have, drawn, n, rng))
        return np.concatenate(kept)[:n], drawn

    def _hopeless_message(self, have: int, drawn: int, wanted: int, rng: np.random.Generator) -> str:
        probe = self._draw(20_000, rng)
        probe = probe[np.isfinite(probe).all(axis=1)]
        parts = []
        for j, name in enumerate(self.sources):
            for side, bad, bound in (("≥", probe[:, j] < self.low[j] - 1e-9, self.low[j]),
                                     ("≤", probe[:, j] > self.high[j] + 1e-9, self.high[j])):
                if bad.mean() > 0.05:
                    parts.append((bad.mean(), f"{name} {side} {bound:.3g} rejects {bad.mean():.0%}"))
        worst = "; ".join(text for _, text in sorted(parts, reverse=True)[:4]) or "no single bound dominates"
        return (f"the bounds accept {have:,} of {drawn:,} mixtures drawn from the prior ({have / drawn:.4%}; "
                f"{wanted:,} wanted): {worst}; widen min_weight/max_weight (or max_epochs), or move the prior "
                f"(sampling.prior, temperature, concentration)")


def mixtures_as_dicts(sources: Sequence[str], weights: np.ndarray) -> list[dict[str, float]]:
    return [{name: float(w) for name, w in zip(sources, row)} for row in weights]
