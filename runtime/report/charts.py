"""Small PNG charts for report.md: one per lm-eval metric, its value per stage (plan order), one line per run.

Rendered in memory (matplotlib's Agg backend, imported here only, when a report is written) so that nothing is
written until every chart exists. File names: `<suite>__<task>__<metric>.png`, characters other than letters,
digits, `.`, `-` and `_` replaced by `_`.
"""
from __future__ import annotations

import io
import re
from typing import Any, Sequence

from runtime.report.collect import IN_HOUSE, RunResult, stage_order

WIDTH_IN, HEIGHT_IN, DPI = 4.8, 2.8, 100
STYLES: tuple[dict[str, Any], ...] = ({"marker": "o", "linestyle": "-"}, {"marker": "s", "linestyle": "--", "markerfacecolor": "none"})


def _value(run: RunResult, stage: str, metric: str) -> float | None:
    result = run.stage(stage)
    return result.value(metric) if result else None


def chart_name(metric: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", metric.replace("/", "__")) + ".png"


def charted(names: Sequence[str]) -> list[str]:
    """The metrics that get a chart: the lm-eval ones (the in-house numbers stay in their table)."""
    return [m for m in names if not m.startswith(IN_HOUSE + "/")]


def render(runs: Sequence[RunResult], labels: Sequence[str], names: Sequence[str]) -> dict[str, bytes]:
    """{file name: PNG bytes} for every charted metric that some run has a value of."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib import pyplot as plt

    everywhere = stage_order(*runs)
    pngs: dict[str, bytes] = {}
    for metric in charted(names):
        values = {label: {stage: _value(run, stage, metric) for stage in everywhere} for run, label in zip(runs, labels)}
        stages = [s for s in everywhere if any(v[s] is not None for v in values.values())]  # a stage without evals: no tick
        if not stages:
            continue
        fig, ax = plt.subplots(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI)
        try:
            for (label, points), style in zip(values.items(), STYLES):
                xs = [i for i, stage in enumerate(stages) if points[stage] is not None]
                ys = [float(points[stages[i]] or 0.0) for i in xs]
                ax.plot(xs, ys, label=label, **style)  # joined across stages without a value
            ax.set_xticks(range(len(stages)), stages, rotation=20, ha="right", fontsize=8)
            ax.set_title(metric, fontsize=9)
            ax.tick_params(axis="y", labelsize=8)
            ax.grid(alpha=0.3)
            if len(runs) > 1:
                ax.legend(fontsize=7)
            fig.tight_layout()
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png")
            pngs[chart_name(metric)] = buffer.getvalue()
        finally:
            plt.close(fig)
    return pngs
