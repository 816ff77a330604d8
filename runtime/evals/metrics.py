"""Our metric names for lm-eval's results: `<suite>/<task>/<metric>` (the eval contract, issue 9).

lm-eval keys a task's results as "<metric>,<filter>" (with "<metric>_stderr,<filter>" beside each). The name drops
the filter when the task has a single filter (or only "none"); with several filters it is `<metric>_<filter>`.
bpb suites name lm-eval's `bits_per_byte` `<suite>/<set>/bpb`. Per lm_eval suite, `<suite>/macro/<metric>` is the
unweighted mean of <metric> over the suite's tasks that report it, for metrics two or more tasks report (as the
compiler plans them: a one-task "average" would only repeat the task's value). Pure functions over plain dicts: the RegMix
objective, the report and the tests read these names, so the rule lives here once.

Test: `python -m pytest tests/runtime/test_eval_parts.py -q -k metric`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

BPB_METRIC = "bits_per_byte"  # lm-eval's metric of a generated bpb task -> our "bpb"
_NOT_METRICS = {"alias", "name", "sample_len", "samples"}


@dataclass
class Named:
    """Metrics under our names, their standard errors (where lm-eval gives one) and documents per task."""

    metrics: dict[str, float] = field(default_factory=dict)
    stderr: dict[str, float] = field(default_factory=dict)
    samples: dict[str, int] = field(default_factory=dict)


def _number(value: Any) -> float | None:
    """lm-eval writes "N/A" for a missing stderr and numpy floats for values."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number


def task_metrics(result: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """One task's lm-eval result -> ({metric: value}, {metric: stderr}) under our metric names (no prefix)."""
    values: dict[tuple[str, str], Any] = {}
    errors: dict[tuple[str, str], Any] = {}
    for key, value in result.items():
        if key in _NOT_METRICS or "," not in key:
            continue
        metric, _, filter_name = key.partition(",")
        if metric.endswith("_stderr"):
            errors[(metric[: -len("_stderr")], filter_name)] = value
        else:
            values[(metric, filter_name)] = value
    filters = {f for _, f in values}
    several = len(filters) > 1

    def name(metric: str, filter_name: str) -> str:
        return f"{metric}_{filter_name}" if several else metric

    metrics = {name(m, f): v for (m, f), v in values.items() if _number(v) is not None}
    stderr = {name(m, f): e for (m, f), e in errors.items() if (m, f) in values and _number(e) is not None}
    return {k: float(v) for k, v in metrics.items()}, {k: float(v) for k, v in stderr.items()}


def effective_samples(results: Mapping[str, Any], task: str) -> int | None:
    """Documents lm-eval scored for `task` (a group: the sum over its leaf tasks)."""
    n_samples = results.get("n-samples") or {}
    if task in n_samples:
        return int(n_samples[task].get("effective", n_samples[task].get("original", 0)))
    children = (results.get("group_subtasks") or {}).get(task)
    if children:
        counts = [effective_samples(results, child) for child in children]
        return sum(c for c in counts if c is not None)
    return None


@dataclass(frozen=True)
class SuiteTasks:
    """One suite's tasks: (our task name, lm-eval's result key) pairs; kind "bpb" or "lm_eval"."""

    suite: str
    kind: str
    tasks: tuple[tuple[str, str], ...]


def name_metrics(results: Mapping[str, Any], suites: Iterable[SuiteTasks]) -> Named:
    """lm-eval's simple_evaluate output (`results`, `n-samples`, `group_subtasks`) -> our named metrics."""
    named = Named()
    task_results = results.get("results") or {}
    for suite in suites:
        per_metric: dict[str, list[float]] = {}
        for ours, key in suite.tasks:
            if key not in task_results:
                continue
            values, errors = task_metrics(task_results[key])
            if suite.kind == "bpb":
                values = {"bpb": values[BPB_METRIC]} if BPB_METRIC in values else {}
                errors = {"bpb": errors[BPB_METRIC]} if BPB_METRIC in errors else {}
            prefix = f"{suite.suite}/{ours}"
            named.metrics.update({f"{prefix}/{m}": v for m, v in values.items()})
            named.stderr.update({f"{prefix}/{m}": e for m, e in errors.items()})
            count = effective_samples(results, key)
            if count is not None:
                named.samples[prefix] = count
            for metric, value in values.items():
                per_metric.setdefault(metric, []).append(value)
        if suite.kind == "lm_eval":
            for metric, values_ in per_metric.items():
                if len(values_) < 2:
                    continue
                finite = [v for v in values_ if math.isfinite(v)]
                named.metrics[f"{suite.suite}/macro/{metric}"] = sum(finite) / len(finite) if finite else math.nan
    return named


def missing(named: Named, wanted: Iterable[str]) -> list[str]:
    """The names in `wanted` (config["metrics"]) the run did not produce."""
    return [name for name in wanted if name not in named.metrics]
