"""`recipe report`'s tables, as plain text (printed) and Markdown (report.md): one run, or two side by side.

One run: per suite, rows = metrics, columns = stages in plan order, values to 4 significant digits, "—" where a
stage has no value; the training jobs' own numbers in a separate "in-house" table; the swarm proxies' summary
(count, min / median / max per metric); a line per eval job that failed or has no metrics.
Two runs (A, B): per suite, rows = metric x stage with A, B, Δ = B − A and whether B is better or worse than A
when the metric's direction is known (bpb, perplexity, loss: lower is better; acc, exact_match, ...: higher).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Callable, Sequence

from compiler.table import markdown_table, text_table
from runtime.report.collect import IN_HOUSE, RunResult, StageResult, SwarmResult, stage_order
from runtime.report.data import data_sections

NONE = "—"
LOWER_IS_BETTER = ("objective", "bpb", "bits_per_byte", "perplexity", "word_perplexity", "byte_perplexity", "loss", "final_loss",
                   "ter", "wer", "cer")
HIGHER_IS_BETTER = ("acc", "acc_norm", "exact_match", "em", "f1", "mcc", "bleu", "chrf", "rouge1", "rouge2", "rougeL",
                    "rougeLsum", "accuracy", "reward_accuracy", "reward_margin", "pass@1", "pass_at_1", "pass@k",
                    "brier_score_neg")

Table = Callable[[Sequence[str], Sequence[Sequence[str]], Sequence[int]], str]


def fmt(value: float | None) -> str:
    """A value to 4 significant digits; "—" for none."""
    return NONE if value is None else f"{value:.4g}"


def direction(metric: str) -> int:
    """+1 when higher is better, -1 when lower is better, 0 when unknown; from the name's last part
    (`<metric>` or `<metric>_<filter>`, e.g. exact_match_strict-match)."""
    base = metric.rsplit("/", 1)[-1]
    for sign, names in ((-1, LOWER_IS_BETTER), (1, HIGHER_IS_BETTER)):
        if any(base == n or base.startswith(n + "_") or base.startswith(n + ",") for n in names):
            return sign
    return 0


def delta(a: float | None, b: float | None, metric: str) -> tuple[str, str]:
    """(Δ = b − a to 4 significant digits, "better" / "worse" / "same" / "") for one metric."""
    if a is None or b is None:
        return NONE, ""
    if fmt(a) == fmt(b):
        return "±0", "same"
    diff = b - a
    sign = direction(metric)
    return f"{diff:+.4g}", "" if sign == 0 else ("better" if diff * sign > 0 else "worse")


def suite_of(metric: str) -> str:
    return metric.split("/", 1)[0]


def group_by_suite(names: Sequence[str]) -> dict[str, list[str]]:
    """Metric names by suite, suites in order of first appearance (lm-eval suites, then in-house)."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(suite_of(name), []).append(name)
    return groups


def suite_title(suite: str) -> str:
    return f"{IN_HOUSE}: the training jobs' own numbers (not lm-eval)" if suite == IN_HOUSE else suite


def stage_header(result: StageResult | None, stage: str) -> str:
    """A stage's column title, with its eval job's state when that job gave no metrics."""
    if result is None or result.eval_ok:
        return stage
    return f"{stage} ({result.eval_state})"


def cell(result: StageResult | None, metric: str, value: float | None) -> str:
    """A value, or for an lm-eval metric of a stage whose eval job gave no metrics, that job's state ("failed")."""
    if value is None and result is not None and not result.eval_ok and suite_of(metric) != IN_HOUSE:
        return str(result.eval_state)
    return fmt(value)


# ------------------------------------------------------------------ one run


def single_tables(run: RunResult, names: Sequence[str], table: Table) -> list[tuple[str, str, str]]:
    """[(suite, title, table)] for one run: rows = metrics, columns = its stages in plan order."""
    headers = ["metric", *(stage_header(s, s.stage) for s in run.stages)]
    right = range(1, len(headers))
    out = []
    for suite, metrics in group_by_suite(names).items():
        rows = [[m, *(fmt(s.value(m)) for s in run.stages)] for m in metrics]
        out.append((suite, suite_title(suite), table(headers, rows, right)))
    return out


def swarm_table(swarm: SwarmResult, table: Table) -> tuple[str, str]:
    """(title, table) of the proxies' metrics: count, min, median, max per metric."""
    metrics = sorted({m for values in swarm.proxies.values() for m in values})
    rows = []
    for metric in metrics:
        values = [p[metric] for p in swarm.proxies.values() if metric in p]
        rows.append([metric, str(len(values)), fmt(min(values)), fmt(statistics.median(values)), fmt(max(values))])
    size = f" of {swarm.size}" if swarm.size is not None else ""
    title = f"{swarm.job}: {len(swarm.proxies)}{size} proxies with metrics ({swarm.state})"
    return title, table(["metric", "proxies", "min", "median", "max"], rows, (1, 2, 3, 4))


def problems(run: RunResult, label: str) -> list[str]:
    """One line per eval job without metrics: failed, missing, still pending or running, skipped."""
    lines = [f"{label}: {s.eval_job} {s.eval_state}" + (f": {s.reason}" if s.reason else "")
             for s in run.stages if not s.eval_ok]
    swarm = run.swarm
    if swarm and (swarm.state not in ("done", "cached") or (swarm.size and len(swarm.proxies) < swarm.size)):
        missing = sorted(set(range(swarm.size or 0)) - set(swarm.proxies))
        shown = ", ".join(str(i) for i in missing[:10]) + (", ..." if len(missing) > 10 else "")
        lines.append(f"{label}: {swarm.job} {swarm.state}" + (f"; no metrics for proxies {shown}" if missing else ""))
    return lines


# ------------------------------------------------------------------ two runs


@dataclass(frozen=True)
class Pair:
    """Two runs under their column labels (A, B)."""

    a: RunResult
    b: RunResult
    label_a: str
    label_b: str


def labels(a: RunResult, b: RunResult | None = None) -> tuple[str, ...]:
    """Short, distinct names for the runs: their folder names, else their paths."""
    if b is None:
        return (a.run_dir.name,)
    if a.run_dir.name != b.run_dir.name:
        return a.run_dir.name, b.run_dir.name
    return str(a.run_dir), str(b.run_dir)


def _failed(result: StageResult | None) -> bool:
    """An eval job that ran and gave no metrics (failed, or done without metrics.json): worth a row."""
    return result is not None and result.eval_state in ("failed", "missing")


def compare_rows(pair: Pair, metrics: Sequence[str]) -> list[list[str]]:
    rows = []
    for metric in metrics:
        for stage in stage_order(pair.a, pair.b):
            sa, sb = pair.a.stage(stage), pair.b.stage(stage)
            va = sa.value(metric) if sa else None
            vb = sb.value(metric) if sb else None
            if va is None and vb is None and not (_failed(sa) or _failed(sb)):
                continue  # nothing to compare: neither side evaluated it (not planned, skipped, not run yet)
            change, verdict = delta(va, vb, metric)
            rows.append([metric, stage, cell(sa, metric, va), cell(sb, metric, vb), change, verdict])
    return rows


def compare_tables(pair: Pair, names: Sequence[str], table: Table) -> list[tuple[str, str, str]]:
    """[(suite, title, table)] of two runs: rows = metric x stage, columns A, B, Δ (B − A), better/worse."""
    headers = ["metric", "stage", f"A: {pair.label_a}", f"B: {pair.label_b}", "Δ (B − A)", "B vs A"]
    out = []
    for suite, metrics in group_by_suite(names).items():
        rows = compare_rows(pair, metrics)
        if rows:
            out.append((suite, suite_title(suite), table(headers, rows, (2, 3, 4))))
    return out


def metric_union(*runs: RunResult) -> list[str]:
    """The runs' metric names: lm-eval names sorted, then in-house names, each once."""
    names = [m for run in runs for m in run.metric_names()]
    unique = list(dict.fromkeys(names))
    return sorted((m for m in unique if suite_of(m) != IN_HOUSE)) + [m for m in unique if suite_of(m) == IN_HOUSE]


# ------------------------------------------------------------------ whole reports


HEADLINE = "headline"


def headline_names(runs: Sequence[RunResult], names: Sequence[str]) -> list[str]:
    """The recipe's headline metrics (`evals.report`, the first run's plan) among the selected ones."""
    return [m for m in dict.fromkeys(m for run in runs for m in run.headline) if m in names]


def _tables(runs: Sequence[RunResult], names: Sequence[str], table: Table) -> list[tuple[str, str, str]]:
    if len(runs) == 1:
        return single_tables(runs[0], names, table)
    a, b = runs
    return compare_tables(Pair(a, b, *labels(a, b)), names, table)


def headline_table(runs: Sequence[RunResult], names: Sequence[str], table: Table) -> str:
    """The headline metrics in one table, whatever their suites."""
    if len(runs) == 1:
        run = runs[0]
        headers = ["metric", *(stage_header(s, s.stage) for s in run.stages)]
        rows = [[m, *(cell(s, m, s.value(m)) for s in run.stages)] for m in names]
        return table(headers, rows, range(1, len(headers)))
    a, b = runs
    pair = Pair(a, b, *labels(a, b))
    headers = ["metric", "stage", f"A: {pair.label_a}", f"B: {pair.label_b}", "Δ (B − A)", "B vs A"]
    return table(headers, compare_rows(pair, names), (2, 3, 4))


def _sections(runs: Sequence[RunResult], names: Sequence[str], table: Table) -> list[tuple[str | None, str, str]]:
    """[(suite or None, title, table)]: the headline metrics (every suite in one table), the suites' tables, then
    the swarm summaries."""
    sections: list[tuple[str | None, str, str]] = []
    headline = headline_names(runs, names)
    if headline:
        sections.append((HEADLINE, "headline metrics (the recipe's evals.report)", headline_table(runs, headline, table)))
    sections += list(_tables(runs, names, table))
    for run, label in zip(runs, labels(*runs)):
        if run.swarm and run.swarm.proxies:
            title, body = swarm_table(run.swarm, table)
            sections.append((None, f"{label} {title}" if len(runs) > 1 else title, body))
        for title, body in data_sections(run.data, table):
            sections.append((None, f"{label} {title}" if len(runs) > 1 else title, body))
    return sections


def heading(runs: Sequence[RunResult]) -> str:
    if len(runs) == 1:
        return f"Evaluation report: {runs[0].name} ({runs[0].run_dir})"
    a, b = labels(*runs)
    return f"Evaluation report: B = {b} ({runs[1].run_dir}) against A = {a} ({runs[0].run_dir}); Δ = B − A"


def plain_text(runs: Sequence[RunResult], names: Sequence[str]) -> str:
    """The printed report."""
    lines = [heading(runs)]
    for _, title, body in _sections(runs, names, text_table):
        lines += ["", title, body]
    notes = [line for run, label in zip(runs, labels(*runs)) for line in problems(run, label)]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


def markdown(runs: Sequence[RunResult], names: Sequence[str], charts: dict[str, str]) -> str:
    """report.md: the same tables, each suite followed by its charts (metric -> relative PNG path)."""
    lines = [f"# {heading(runs)}"]
    for suite, title, body in _sections(runs, names, markdown_table):
        lines += ["", f"## {title}", "", body]
        images = [f"![{m}]({charts[m]})" for m in names if m in charts and suite_of(m) == suite]
        if images:
            lines += ["", *images]
    notes = [line for run, label in zip(runs, labels(*runs)) for line in problems(run, label)]
    if notes:
        lines += ["", "## Eval jobs without metrics", "", *(f"- {line}" for line in notes)]
    return "\n".join(lines) + "\n"
