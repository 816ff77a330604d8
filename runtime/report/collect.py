"""Read a launched run into a table of stage x metric values: what `recipe report` prints, writes and charts.

- One column per model the run trained and evaluated, named after the job that made it (its stage's name for a
  stage's main job: `sft`; its own id for a second model of one stage: `rlvr-random-reward`), in plan order (the
  order of the jobs in `runs/<name>/state.json`). A job's stage, kind and config come from its output folder's
  config.json, else from the plan.json state.json names; an eval job's model is its config's `model.job`, else
  its id without `eval-`.
- Per column: the eval job's `metrics.json` (`<suite>/<task>/<metric>` -> value; a done job without one falls
  back to its DONE.json's "metrics"), and the training job's own numbers from its DONE.json ("final_loss" and the
  in-house "eval" dict), named `in-house/...` so they never pass for lm-eval numbers. A training job that is not
  evaluated gets a column only when it has such numbers.
- The swarm's proxies (`mix-swarm-eval`, an array): every `proxy-<i>/metrics.json` in its folder.

User-facing problems (no such run, no eval jobs yet, a corrupt metrics.json) raise ReportError: one line.
Standard library only; test: `python -m pytest tests/runtime/test_report.py -q`.
"""
from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from runtime.launch.status import StatusError, find_run
from runtime.report.data import KINDS as DATA_KINDS, DataJob, read_data_job

EVAL_KIND = "eval"
SWARM_EVAL = "mix-swarm-eval"
IN_HOUSE = "in-house"
FINAL_LOSS = f"{IN_HOUSE}/train/final_loss"
OBJECTIVE = "mix/objective"  # the RegMix objective of a model's metrics (lower is better)
HAS_METRICS = ("done", "cached")
# Sizes, not scores: left out of the in-house numbers.
_COUNTS = frozenset({"bytes", "docs", "tokens", "n", "pairs", "samples", "count"})


class ReportError(StatusError):
    """A user-facing problem with a report (no run, no eval jobs, a corrupt metrics file): one line, exit 2."""


@dataclass
class StageResult:
    """One column of the report: a model the run trained, its eval job's metrics and its own (in-house) numbers.

    `stage` is the column's name: the id of the job that made the model, which is the stage's name for a stage's
    main job (`sft`) and the job's own id for a second model of a stage (`rlvr-random-reward` in stage `rlvr`).
    """

    stage: str
    plan_stage: str = ""
    eval_job: str | None = None
    eval_state: str | None = None  # state.json's state, or "missing" (done but no metrics)
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    in_house: dict[str, float] = field(default_factory=dict)

    @property
    def eval_ok(self) -> bool:
        return self.eval_job is None or self.eval_state in HAS_METRICS

    def value(self, name: str) -> float | None:
        return self.in_house.get(name) if name.startswith(IN_HOUSE + "/") else self.metrics.get(name)


@dataclass
class SwarmResult:
    """The swarm proxies' metrics (`mix-swarm-eval`): one dict per proxy that has its metrics.json."""

    job: str
    state: str
    size: int | None
    proxies: dict[int, dict[str, float]] = field(default_factory=dict)


@dataclass
class RunResult:
    name: str
    run_dir: Path
    stages: list[StageResult]
    swarm: SwarmResult | None = None
    headline: list[str] = field(default_factory=list)  # the recipe's evals.report metrics (the plan's)
    objective: list[dict[str, Any]] = field(default_factory=list)  # the plan's RegMix objective terms, if any
    data: list[DataJob] = field(default_factory=list)  # decontamination and data generation, in plan order

    def stage(self, name: str) -> StageResult | None:
        return next((s for s in self.stages if s.stage == name), None)

    def metric_names(self) -> list[str]:
        """Every metric any stage has: lm-eval names sorted, then in-house names (final loss first)."""
        evals = sorted({m for s in self.stages for m in s.metrics})
        house = sorted({m for s in self.stages for m in s.in_house}, key=lambda m: (m != FINAL_LOSS, m))
        return evals + house


def _read_json(path: Path) -> Any:
    """A JSON file's content; None when it does not exist; ReportError when it is not JSON."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ReportError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def read_metrics_file(path: Path) -> dict[str, float] | None:
    """The "metrics" dict of an eval job's metrics.json (None when absent); ReportError when it is malformed."""
    data = _read_json(path)
    if data is None:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
        raise ReportError(f"{path}: not an eval metrics file (expected an object with a \"metrics\" object)")
    out: dict[str, float] = {}
    for name, value in data["metrics"].items():
        if value is None:  # NaN written as null: no value
            continue
        number = _number(value)
        if number is None or str(name).count("/") != 2:
            raise ReportError(f"{path}: metric {name!r}: expected a <suite>/<task>/<metric> name and a number "
                              f"(got {json.dumps(value)})")
        out[name] = number
    return out


def in_house_numbers(done: Any) -> dict[str, float]:
    """A training job's DONE.json -> `in-house/train/final_loss` and `in-house/<set>/<metric>` from its "eval"."""
    if not isinstance(done, dict):
        return {}
    out: dict[str, float] = {}
    loss = _number(done.get("final_loss"))
    if loss is not None:
        out[FINAL_LOSS] = loss
    evals = done.get("eval")
    if isinstance(evals, dict):
        for name, values in evals.items():
            if not isinstance(values, dict):
                continue
            for key, value in values.items():
                number = _number(value)
                if number is not None and key not in _COUNTS:
                    out[f"{IN_HOUSE}/{name}/{key}"] = number
    return out


@dataclass
class _Job:
    id: str
    state: str
    reason: str
    output_dir: Path
    stage: str
    kind: str
    config: dict[str, Any]
    array: Any


def _plan(plan_path: Any) -> dict[str, Any]:
    """The plan.json state.json names, when it is still there (else {})."""
    try:
        plan = json.loads(Path(str(plan_path)).read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return {}
    return plan if isinstance(plan, dict) else {}


def _plan_jobs(plan: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The plan's jobs by id."""
    try:
        return {job["id"]: job for job in plan["jobs"]}
    except (KeyError, TypeError):
        return {}


def _objective(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """The RegMix objective's terms ({metric, weight, direction}) of the plan's swarm, if it searches its mix."""
    for job in plan.get("jobs") or []:
        terms = job.get("config", {}).get("objective") if isinstance(job, dict) else None
        if job.get("kind") == "regmix_swarm" and isinstance(terms, list):
            return [t for t in terms if isinstance(t, dict)]
    return []


def objective_value(metrics: dict[str, float], terms: list[dict[str, Any]]) -> float | None:
    """The objective as RegMix's fit scores it (runtime.regmix.objective): Σ weight·metric over minimized terms
    minus Σ weight·metric over maximized ones; lower is better. None when a term's metric is missing."""
    total = 0.0
    for term in terms:
        value = metrics.get(str(term.get("metric")))
        if value is None:
            return None
        sign = -1.0 if term.get("direction") == "maximize" else 1.0
        total += sign * float(term.get("weight", 1.0)) * value
    return total


def add_objective(runs: list["RunResult"]) -> None:
    """Score every evaluated model of every run with the first run's objective (or the second's), as OBJECTIVE:
    a pretraining run on the searched mix and one on the natural mix are compared on the same objective."""
    terms = next((run.objective for run in runs if run.objective), [])
    if not terms:
        return
    for run in runs:
        for stage in run.stages:
            value = objective_value(stage.metrics, terms)
            if value is not None:
                stage.metrics[OBJECTIVE] = value
        run.headline = [OBJECTIVE, *[m for m in run.headline if m != OBJECTIVE]]


def _headline(plan: dict[str, Any]) -> list[str]:
    """The metrics the recipe's `evals.report` names, in its order."""
    evals = plan.get("evals")
    names = evals.get("report") if isinstance(evals, dict) else None
    return [str(n) for n in names] if isinstance(names, list) else []


def _jobs(run_dir: Path) -> tuple[dict[str, Any], list[_Job]]:
    state = _read_json(run_dir / "state.json")
    if not isinstance(state, dict) or not isinstance(state.get("jobs"), dict):
        raise ReportError(f"{run_dir / 'state.json'}: not a run state file (no \"jobs\" object)")
    planned = _plan_jobs(_plan(state.get("plan")))
    jobs = []
    for job_id, entry in state["jobs"].items():
        out = Path(str(entry.get("output_dir", run_dir / job_id)))
        try:
            config = json.loads((out / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            config = {}
        config = config if isinstance(config, dict) else {}
        source = config or planned.get(job_id, {})
        stage = source.get("stage") or (job_id[len("eval-"):] if job_id.startswith("eval-") else job_id)
        kind = source.get("kind") or (EVAL_KIND if job_id.startswith("eval-") else "")
        jobs.append(_Job(job_id, str(entry.get("state", "pending")), str(entry.get("reason", "")), out, str(stage),
                         str(kind), source.get("config") or {}, source.get("array")))
    return state, jobs


def _eval_stage(job: _Job, target: str) -> StageResult:
    result = StageResult(target, plan_stage=job.stage, eval_job=job.id, eval_state=job.state, reason=job.reason)
    if job.state not in HAS_METRICS:
        return result
    metrics = read_metrics_file(job.output_dir / "metrics.json")
    if metrics is None:  # an older job, or one that wrote only DONE.json
        done = _read_json(job.output_dir / "DONE.json")
        found = done.get("metrics") if isinstance(done, dict) else None
        metrics = {k: v for k, v in (found or {}).items() if _number(v) is not None} if isinstance(found, dict) else None
    if metrics is None:
        result.eval_state, result.reason = "missing", f"no metrics.json in {job.output_dir}"
    else:
        result.metrics = metrics
    return result


def _swarm(job: _Job) -> SwarmResult:
    size = job.array.get("size") if isinstance(job.array, dict) else None
    result = SwarmResult(job.id, job.state, size if isinstance(size, int) else None)
    for path in sorted(job.output_dir.glob("proxy-*/metrics.json")):
        index = path.parent.name[len("proxy-"):]
        if index.isdigit():
            metrics = read_metrics_file(path)
            if metrics:
                result.proxies[int(index)] = metrics
    return result


def _target(job: _Job) -> str:
    """The job an eval job evaluates: its config's model.job, else its id without `eval-`."""
    model = job.config.get("model")
    if isinstance(model, dict) and model.get("job"):
        return str(model["job"])
    return job.id[len("eval-"):] if job.id.startswith("eval-") else job.stage


def collect(run_dir: Path) -> RunResult:
    """Read one run folder (it holds state.json) into one result per evaluated model, in plan order."""
    state, jobs = _jobs(run_dir)
    plan = _plan(state.get("plan"))
    swarm = next((j for j in jobs if j.id == SWARM_EVAL), None)
    if not any(j.kind == EVAL_KIND for j in jobs):
        raise ReportError(f"{run_dir}: no eval jobs in this run (its plan has none: add evals to the recipe, "
                          f"compile and launch it again)")
    evals = {_target(j): j for j in jobs if j.kind == EVAL_KIND and j.id != SWARM_EVAL}
    columns: dict[str, StageResult] = {}
    for job in jobs:
        if job.id == SWARM_EVAL:
            continue
        if job.kind == EVAL_KIND:
            target = _target(job)
            evaluated = _eval_stage(job, target)
            evaluated.in_house = columns[target].in_house if target in columns else {}
            columns[target] = evaluated
            continue
        numbers = in_house_numbers(_read_json(job.output_dir / "DONE.json")) if job.state in HAS_METRICS else {}
        if numbers or job.id in evals:  # a column where the job's model is evaluated, or it has numbers of its own
            columns.setdefault(job.id, StageResult(job.id, plan_stage=job.stage)).in_house = numbers
    kept = list(columns.values())
    data = [read_data_job(j.id, j.kind, j.output_dir) for j in jobs if j.kind in DATA_KINDS and j.state in HAS_METRICS]
    result = RunResult(name=str(state.get("recipe") or run_dir.name), run_dir=run_dir, stages=kept,
                       swarm=_swarm(swarm) if swarm else None, headline=_headline(plan), objective=_objective(plan),
                       data=[d for d in data if d is not None])
    if not any(s.metrics for s in kept) and not (result.swarm and result.swarm.proxies):
        waiting = [f"{s.eval_job} {s.eval_state}" for s in kept if s.eval_job]
        waiting += [f"{result.swarm.job} {result.swarm.state}"] if result.swarm else []
        raise ReportError(f"{run_dir}: no eval job has metrics yet ({', '.join(waiting)})")
    return result


def load_run(arg: str, runs: str | Path = "runs") -> RunResult:
    """`recipe report`'s RUN argument (runs/<name> or a recipe name, as `recipe status` takes it) -> its results."""
    return collect(find_run(arg, runs))


def select_metrics(names: Iterable[str], patterns: Iterable[str] | None) -> list[str]:
    """The names matching any glob of `patterns` (all when there are none), order kept."""
    patterns = list(patterns or [])
    return [n for n in names if not patterns or any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def stage_order(*runs: RunResult) -> list[str]:
    """Every stage of the runs in plan order: the first run's, with the others' extra stages after their
    predecessor in their own run."""
    order: list[str] = []
    for run in runs:
        previous: str | None = None
        for stage in (s.stage for s in run.stages):
            if stage not in order:
                order.insert(order.index(previous) + 1 if previous is not None else 0, stage)
            previous = stage
    return order
