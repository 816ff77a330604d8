"""PNG charts of the fit and the solve (matplotlib with the Agg backend, imported only when a chart is drawn).

- `cv_plot(target, actual, predicted, scores, path)`: out-of-fold predicted vs actual, one point per run, with the
  diagonal and the CV Spearman / Pearson in the title (one per metric and one for the objective).
- `mix_plot(result, path)`: left, the chosen and the natural weights per source; right, each metric's predicted
  change (chosen − natural), green where it is better in the metric's direction, red where worse.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)
    return path


def cv_plot(target: str, actual: np.ndarray, predicted: np.ndarray, scores: Mapping[str, Any], kind: str,
            path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    try:
        ax.scatter(actual, predicted, s=14, alpha=0.75)
        lo = float(min(np.min(actual), np.min(predicted)))
        hi = float(max(np.max(actual), np.max(predicted)))
        ax.plot([lo, hi], [lo, hi], color="grey", linewidth=0.8, linestyle="--")
        rho, r = scores.get("spearman"), scores.get("pearson")
        stats = "constant" if rho is None else f"Spearman {rho:.3f}, Pearson {r:.3f}"
        ax.set_title(f"{target}\n{kind}, out of fold: {stats}", fontsize=9)
        ax.set_xlabel("actual")
        ax.set_ylabel("predicted (CV)")
        fig.tight_layout()
        return _save(fig, path)
    finally:
        plt.close(fig)


def mix_plot(result: Any, path: Path) -> Path:
    """result: runtime.regmix.solve.SolveResult."""
    plt = _pyplot()
    delta = result.delta()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, max(3.5, 0.32 * max(len(result.sources), len(delta)) + 1.5)))
    try:
        y = np.arange(len(result.sources))
        if result.natural_weights is not None:
            left.barh(y + 0.2, result.natural_weights, height=0.4, label="natural", color="#999999")
        left.barh(y - 0.2, result.weights, height=0.4, label="chosen", color="#1f77b4")
        left.set_yticks(y, result.sources, fontsize=8)
        left.invert_yaxis()
        left.set_xlabel("weight")
        left.legend(fontsize=8)
        left.set_title("mixture", fontsize=10)
        names = list(delta)
        colours = {"better": "#2ca02c", "worse": "#d62728"}
        right.barh(np.arange(len(names)), [delta[m] for m in names],
                   color=[colours.get(result.better(m, delta[m]), "#999999") for m in names])
        right.set_yticks(np.arange(len(names)), names, fontsize=8)
        right.invert_yaxis()
        right.axvline(0, color="black", linewidth=0.6)
        right.set_xlabel("predicted change (chosen − natural)")
        right.set_title("predicted metrics (green: better, red: worse)", fontsize=10)
        fig.tight_layout()
        return _save(fig, path)
    finally:
        plt.close(fig)
