"""`recipe report`: a run's eval metrics per stage, or two runs side by side, printed and as Markdown with charts.

    recipe report RUN [OTHER_RUN] [--runs DIR] [--out DIR] [--metric GLOB ...]

RUN and OTHER_RUN: runs/<name> (a folder with state.json) or a recipe name, as `recipe status` takes them.
One run: per suite, a table of metric x stage (plan order; a stage with two models, RL and its random-reward
control, has a column for each, named after the job that made the model). Two runs (A = RUN, B = OTHER_RUN): per suite and
metric, each stage's A, B, Δ = B − A and whether B is better or worse (when the metric's direction is known).
Writes OUT/report.md (default RUN/report/, or RUN/report-vs-<OTHER>/ for two runs) with the same tables and
OUT/charts/<suite>__<task>__<metric>.png, every chart rendered before any file is written, each file written
atomically. --metric GLOB (repeatable) keeps the matching metric names (`tasks/*/exact_match`, `in-house/*`).

Layers: collect.py (run folders -> stage x metric values), text.py (plain and Markdown tables), charts.py (PNGs,
matplotlib imported only there). Test: `python -m pytest tests/runtime/test_report.py -q`.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Sequence, TextIO

from runtime.outputs import atomic_write_bytes, atomic_write_text
from runtime.report.collect import ReportError, RunResult, add_objective, load_run, select_metrics
from runtime.report.text import labels, markdown, metric_union, plain_text

__all__ = ["ReportError", "report", "default_out"]


def default_out(run: RunResult, other: RunResult | None) -> Path:
    """RUN/report for one run; RUN/report-vs-<OTHER> for two (a comparison never overwrites the run's own report)."""
    if other is None:
        return run.run_dir / "report"
    name = other.run_dir.name if other.run_dir.name != run.run_dir.name else f"{other.run_dir.parent.name}-{other.run_dir.name}"
    return run.run_dir / ("report-vs-" + re.sub(r"[^A-Za-z0-9._-]", "_", name))


def write_markdown(runs: Sequence[RunResult], names: Sequence[str], out: Path) -> tuple[Path, int]:
    """Render every chart and report.md in memory, then write the charts and report.md (last); return its path and
    the number of charts."""
    from runtime.report import charts

    try:
        pngs = charts.render(runs, labels(*runs), names)
    except ImportError as exc:
        raise ReportError(f"the charts need matplotlib ({exc}): pip install -e '.[runtime]'") from None
    links = {m: f"charts/{charts.chart_name(m)}" for m in names if charts.chart_name(m) in pngs}
    text = markdown(runs, names, links)
    try:
        for name, data in pngs.items():
            atomic_write_bytes(out / "charts" / name, data)
        return atomic_write_text(out / "report.md", text), len(pngs)
    except OSError as exc:
        raise ReportError(f"cannot write the report to {out}: {exc.strerror or exc}") from None


def report(run: str, other: str | None = None, *, runs: str | Path = "runs", out: str | Path | None = None,
           metrics: Sequence[str] | None = None, stream: TextIO | None = None) -> int:
    """Print the report of RUN (or RUN against OTHER) and write its Markdown version; returns 0."""
    stream = stream or sys.stdout
    results = [load_run(run, runs)] + ([load_run(other, runs)] if other is not None else [])
    add_objective(results)
    if len(results) == 2 and results[0].run_dir.resolve() == results[1].run_dir.resolve():
        raise ReportError(f"{run} and {other} are the same run ({results[0].run_dir}): name two runs to compare")
    every = metric_union(*results)
    names = select_metrics(every, metrics)
    if not names:
        raise ReportError(f"no metric matches {' '.join(metrics or [])} (metrics: {', '.join(every) or 'none'})")
    for result in results:  # the swarm's summary shows the selected metrics too
        if result.swarm and metrics:
            result.swarm.proxies = {i: {m: p[m] for m in select_metrics(p, metrics)} for i, p in result.swarm.proxies.items()}
    print(plain_text(results, names), file=stream)
    target = Path(out) if out is not None else default_out(results[0], results[1] if len(results) == 2 else None)
    path, count = write_markdown(results, names, target)
    print(f"\nmarkdown: {path} ({count} chart{'s' if count != 1 else ''})", file=stream)
    return 0
