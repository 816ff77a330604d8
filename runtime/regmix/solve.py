"""The solve: many candidate mixtures from the prior, ranked by the fitted objective, the top k averaged (RegMix).

    from runtime.regmix.solve import solve
    result = solve(predictor, sampler, candidates=100_000, top_k=128, rng=rng_for(seed, "solve"), natural=natural)
    result.as_json()        # mix.json: weights, predicted, objective, natural, delta, candidates
    print(result.table())   # the trade-off: chosen vs natural weights, predicted change of every metric

Candidates come from the swarm's sampler (same prior, concentration range and bounds; `runtime.regmix.sampling`)
on the seed's "solve" stream. Every candidate is scored by the objective's own model (lower is better,
`runtime.regmix.objective`; "objective" in mix.json is that model's prediction); the average of the k best is again within the bounds (the bounds are a box and the
simplex is convex) and is what pretraining gets. Every fitted metric is then predicted for the chosen and the natural
(token-proportional) mix: delta = predicted(chosen) − predicted(natural), and whether that is better or worse in the
metric's direction (the objective's for its metrics; otherwise from the name, as `recipe report` does).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from runtime.regmix.fit import Predictor
from runtime.regmix.sampling import Sampler


@dataclass
class SolveResult:
    sources: list[str]
    weights: np.ndarray
    predicted: dict[str, float]
    objective: float
    natural_weights: np.ndarray | None
    natural_predicted: dict[str, float] | None
    natural_objective: float | None
    natural_in_bounds: bool | None
    candidates: int
    drawn: int
    top_k: int
    top_objectives: np.ndarray
    directions: dict[str, str]

    def delta(self) -> dict[str, float]:
        if self.natural_predicted is None:
            return {}
        return {m: self.predicted[m] - self.natural_predicted[m] for m in self.predicted}

    def as_json(self) -> dict[str, Any]:
        natural = None
        if self.natural_weights is not None:
            natural = {"weights": dict(zip(self.sources, self.natural_weights.tolist())),
                       "predicted": self.natural_predicted, "objective": self.natural_objective,
                       "in_bounds": self.natural_in_bounds}
        return {
            "weights": dict(zip(self.sources, self.weights.tolist())), "predicted": self.predicted,
            "objective": self.objective, "natural": natural, "delta": self.delta(),
            "better": {m: self.better(m, d) for m, d in self.delta().items()},
            "candidates": {"accepted": self.candidates, "drawn": self.drawn, "top_k": self.top_k,
                           "top_k_objective": {"best": float(self.top_objectives.min()),
                                               "worst": float(self.top_objectives.max())}},
        }

    def better(self, metric: str, delta: float) -> str:
        direction = self.directions.get(metric)
        if direction is None or delta == 0:
            return "same" if delta == 0 else ""
        return "better" if (delta < 0) == (direction == "minimize") else "worse"

    def table(self) -> str:
        """The trade-off as text: weights (natural, chosen, Δ) and predicted metrics (natural, chosen, Δ, verdict)."""
        from compiler.table import text_table

        nat = self.natural_weights if self.natural_weights is not None else np.full(len(self.sources), np.nan)
        rows = [[s, f"{n:.3f}", f"{c:.3f}", f"{c - n:+.3f}"] for s, n, c in zip(self.sources, nat, self.weights)]
        weights = text_table(["source", "natural", "chosen", "Δ"], rows, right=(1, 2, 3))
        delta = self.delta()
        rows = []
        for metric, value in self.predicted.items():
            base = self.natural_predicted.get(metric) if self.natural_predicted else None
            d = delta.get(metric)
            rows.append([metric, {"minimize": "min", "maximize": "max"}.get(self.directions.get(metric, ""), "?"),
                         "—" if base is None else f"{base:.4g}", f"{value:.4g}", "—" if d is None else f"{d:+.4g}",
                         "" if d is None else self.better(metric, d)])
        nat_obj = "—" if self.natural_objective is None else f"{self.natural_objective:.4g}"
        rows.append(["objective (lower is better)", "min", nat_obj, f"{self.objective:.4g}",
                     "—" if self.natural_objective is None else f"{self.objective - self.natural_objective:+.4g}", ""])
        metrics = text_table(["metric (predicted)", "dir", "natural", "chosen", "Δ", ""], rows, right=(2, 3, 4))
        note = "" if self.natural_in_bounds in (None, True) else "\n(the natural mix is outside the bounds)"
        return f"{weights}\n\n{metrics}{note}"


def metric_directions(predictor: Predictor) -> dict[str, str]:
    """Each metric's direction: the objective's where it names the metric, else from its name (report's rule)."""
    from runtime.report.text import direction

    out = {}
    for metric in predictor.models:
        sign = direction(metric)
        if sign:
            out[metric] = "minimize" if sign < 0 else "maximize"
    out.update({t.metric: t.direction for t in predictor.objective.terms})
    return out


def _predict_one(predictor: Predictor, weights: np.ndarray) -> dict[str, float]:
    return {m: float(v[0]) for m, v in predictor.predict(weights[None, :]).items()}


def solve(predictor: Predictor, sampler: Sampler, *, candidates: int, top_k: int, rng: np.random.Generator,
          natural: Mapping[str, float] | None = None) -> SolveResult:
    """Sample `candidates` in-bounds mixtures, average the `top_k` with the lowest predicted objective."""
    if list(sampler.sources) != list(predictor.sources):
        raise ValueError(f"the sampler's sources {list(sampler.sources)} differ from the fit's {predictor.sources}")
    if top_k > candidates:
        raise ValueError(f"top_k {top_k} exceeds candidates {candidates}")
    x, drawn = sampler.sample_counted(candidates, rng)
    objective = predictor.predict_objective(x)
    top = np.argsort(objective, kind="stable")[:top_k]
    chosen = x[top].mean(axis=0)
    chosen = chosen / chosen.sum()
    predicted = _predict_one(predictor, chosen)
    nat = nat_pred = nat_obj = nat_ok = None
    if natural is not None:
        nat = np.array([float(natural[s]) for s in predictor.sources])
        nat_pred = _predict_one(predictor, nat)
        nat_obj = float(predictor.predict_objective(nat[None, :])[0])
        nat_ok = bool(sampler.accepts(nat[None, :])[0])
    return SolveResult(list(predictor.sources), chosen, predicted, float(predictor.predict_objective(chosen[None, :])[0]),
                       nat, nat_pred, nat_obj, nat_ok, len(x), drawn, top_k, objective[top], metric_directions(predictor))


def candidates_matrix(rows: Sequence[Mapping[str, float]], sources: Sequence[str]) -> np.ndarray:
    return np.array([[float(r[s]) for s in sources] for r in rows])
