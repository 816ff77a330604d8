"""The combined objective: the recipe's weighted sum of metrics with their directions; lower is better.

    objective = Σ weight × metric  (direction minimize)  −  Σ weight × metric  (direction maximize)

One convention everywhere (fit's CV scores, the solve's ranking, mix.json, `recipe mix fit`): a minimised
metric (bits-per-byte, loss) enters with its sign, a maximised one (accuracy) with the opposite sign, so the
best mixture has the lowest objective. Metrics are not rescaled: the weights are the recipe's, in the metrics' own
units.

`parse_objective_arg("tasks/arith/exact_match:max=0.2")` reads the CLI form NAME[:min|max][=WEIGHT] (min and 1
when left out).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

DIRECTIONS = {"min": "minimize", "max": "maximize", "minimize": "minimize", "maximize": "maximize"}


@dataclass(frozen=True)
class Term:
    metric: str
    weight: float
    direction: str  # "minimize" | "maximize"

    @property
    def sign(self) -> float:
        """+1 for a minimised metric, −1 for a maximised one: objective terms are 'lower is better'."""
        return 1.0 if self.direction == "minimize" else -1.0

    def as_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "weight": self.weight, "direction": self.direction}


@dataclass(frozen=True)
class Objective:
    terms: tuple[Term, ...]

    @classmethod
    def from_config(cls, terms: Iterable[Mapping[str, Any]]) -> "Objective":
        out = []
        for t in terms:
            direction = DIRECTIONS.get(str(t.get("direction", "minimize")))
            if direction is None:
                raise ValueError(f"objective {t.get('metric')!r}: direction {t.get('direction')!r} (minimize or maximize)")
            out.append(Term(str(t["metric"]), float(t.get("weight", 1.0)), direction))
        if not out:
            raise ValueError("the objective names no metric")
        return cls(tuple(out))

    @property
    def metrics(self) -> list[str]:
        return [t.metric for t in self.terms]

    def __call__(self, values: Mapping[str, Any]) -> Any:
        """The objective of metric values (floats or arrays of the same shape); lower is better."""
        return sum(t.sign * t.weight * np.asarray(values[t.metric], dtype=float) for t in self.terms)

    def better(self, metric: str, delta: float) -> bool | None:
        """Whether a change `delta` of `metric` is an improvement in its direction (None: not in the objective)."""
        for t in self.terms:
            if t.metric == metric:
                return delta * t.sign < 0
        return None

    def as_json(self) -> list[dict[str, Any]]:
        return [t.as_json() for t in self.terms]

    def describe(self) -> str:
        """'+0.8·bpb/text/bpb −0.2·tasks/arith/exact_match (lower is better)'."""
        return " ".join(f"{'+' if t.sign > 0 else '−'}{t.weight:g}·{t.metric}" for t in self.terms) + " (lower is better)"


def parse_objective_arg(text: str) -> Term:
    """NAME[:min|max][=WEIGHT] -> Term; ValueError with the reason on bad input."""
    name, weight = text, 1.0
    if "=" in text:
        name, _, raw = text.rpartition("=")
        try:
            weight = float(raw)
        except ValueError:
            raise ValueError(f"weight {raw!r} is not a number") from None
        if not np.isfinite(weight) or weight <= 0:
            raise ValueError(f"weight {raw!r} must be a positive number")
    direction = "minimize"
    if ":" in name:
        base, _, raw = name.rpartition(":")
        if raw not in ("min", "max"):
            raise ValueError(f"direction {raw!r}: min or max")
        name, direction = base, DIRECTIONS[raw]
    if not name:
        raise ValueError("no metric name")
    return Term(name, weight, direction)


def rank(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Ranks starting at 0, ties averaged (what Spearman's correlation needs)."""
    x = np.asarray(values, dtype=float)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=float)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse]


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    a, b = a - a.mean(), b - b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return pearson(rank(a), rank(b))


def scores(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Spearman, Pearson and RMSE of out-of-fold predictions against the actual values."""
    err = np.asarray(predicted, dtype=float) - np.asarray(actual, dtype=float)
    return {"spearman": spearman(actual, predicted), "pearson": pearson(actual, predicted),
            "rmse": float(np.sqrt(np.mean(err * err)))}
