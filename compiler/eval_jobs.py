"""Eval jobs: the suites of `evals` resolved to metric names, one eval job per model that asks for them, an array
over the RegMix proxies, and the checks that every metric an objective or the report names is produced.

Which suites run on a stage's model: the stage's own `evals` list when it has one; else, when `evals.when` is
`each_stage` (or `end` and this is the last stage), every suite whose `models` matches the model (base models come
out of pretrain/midtrain/long_context, chat models out of sft/dpo/rlvr).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compiler.diagnostics import did_you_mean
from compiler.eval_tasks import KNOWN_TASK_METRICS, TaskFileError, TaskInfo, read_task_file
from compiler.hardware import nodes_for
from compiler.job_common import JOB_ENTRIES, dump, inference_environment, resources
from compiler.located import locate
from compiler.mix_jobs import FIT_JOB, SWARM_JOB
from compiler.plan import Job, PlanContext
from spec.cluster import LocalCluster
from spec.data import DatasetRef, RegMixSearch
from spec.evals import BpbSuite, EvalsSpec, LmEvalSuite, is_task_file

EVAL_KIND = "eval"
PROXY_EVAL_JOB = f"{SWARM_JOB}-eval"
MODEL_JOB_KINDS = ("pretrain", "midtrain", "long_context", "sft", "dpo", "rlvr_trainer")
CHAT_STAGE_KINDS = ("sft", "dpo", "rlvr")


@dataclass
class ResolvedSuite:
    name: str
    spec: BpbSuite | LmEvalSuite
    config: dict[str, Any]  # the suite as the eval job reads it (chat_template filled in per model)
    metrics: list[str]
    broken: bool = False  # a task of it could not be read (already reported): its metrics are not checked


def eval_job_id(model_job: str) -> str:
    return f"eval-{model_job}"


def _recipe_dir(ctx: PlanContext) -> Path:
    return Path(ctx.tree.loc.file).resolve().parent


def _bpb_sets(ctx: PlanContext, suite: BpbSuite, at: tuple) -> dict[str, dict[str, Any]]:
    sets = {name: dump(ref) for name, ref in suite.sets.items()}
    if suite.data_sources:
        held_out = {name: src for name, src in ctx.recipe.data.sources.items() if src.eval_split}
        if not held_out:
            ctx.error((*at, "data_sources"), "no data source has an eval_split to evaluate")
        for name, source in held_out.items():
            if name in sets:
                ctx.error((*at, "sets", name), f"set '{name}' is also a data source evaluated by data_sources: rename it")
                continue
            ref = DatasetRef(hf=source.hf, path=source.path, subset=source.subset, split=source.eval_split or "",
                             text_field=source.text_field)
            sets[name] = dump(ref)
    return dict(sorted(sets.items()))


def _lm_eval_tasks(ctx: PlanContext, suite: LmEvalSuite, at: tuple) -> tuple[list[TaskInfo], bool]:
    """The suite's tasks, and whether one could not be read (reported here)."""
    tasks: list[TaskInfo] = []
    broken = False
    for i, task in enumerate(suite.tasks):
        if not is_task_file(task):
            metrics = suite.metrics.get(task) or KNOWN_TASK_METRICS.get(task)
            if metrics is None:
                ctx.error((*at, "tasks", i), f"the compiler does not know the metrics of lm-eval task '{task}'"
                          f"{did_you_mean(task, KNOWN_TASK_METRICS)}: list them under metrics: {{{task}: [acc, ...]}}")
                metrics = []
            tasks.append(TaskInfo(name=task, metrics=tuple(metrics)))
            continue
        loc, _ = locate(ctx.tree, [*at, "tasks", i])
        written_in = Path(loc.file).parent if loc else _recipe_dir(ctx)
        path = (written_in / task).resolve()
        if not path.is_file():
            ctx.error((*at, "tasks", i), f"task file {task} not found (looked for {path})")
            broken = True
            continue
        try:
            info = read_task_file(path, task)
        except TaskFileError as exc:
            ctx.diagnostics.append(exc.diagnostic)
            broken = True
            continue
        tasks.append(TaskInfo(info.name, info.metrics, os.path.relpath(path, _recipe_dir(ctx)), info.sha256))
    for name in suite.metrics:
        if name not in [t.name for t in tasks]:
            ctx.error((*at, "metrics", name), f"no task '{name}' in this suite{did_you_mean(name, [t.name for t in tasks])}")
    seen: set[str] = set()
    for i, info in enumerate(tasks):
        if info.name in seen or info.name == "macro":
            ctx.error((*at, "tasks", i), f"task name '{info.name}' is {'reserved (the macro average)' if info.name == 'macro' else 'listed twice'}")
        seen.add(info.name)
    return tasks, broken


def _macro(tasks: list[TaskInfo]) -> list[str]:
    """Metrics that more than one task reports get a macro average."""
    counts: dict[str, int] = {}
    for info in tasks:
        for metric in info.metrics:
            counts[metric] = counts.get(metric, 0) + 1
    return sorted(m for m, n in counts.items() if n > 1)


def resolve_suites(ctx: PlanContext, evals: EvalsSpec) -> dict[str, ResolvedSuite]:
    out: dict[str, ResolvedSuite] = {}
    for name, suite in evals.suites.items():
        at = ("evals", "suites", name)
        if isinstance(suite, BpbSuite):
            sets = _bpb_sets(ctx, suite, at)
            config = {"kind": "bpb", "limit": suite.limit, "sets": sets}
            metrics = [f"{name}/{s}/bpb" for s in sets]
            broken = False
        else:
            tasks, broken = _lm_eval_tasks(ctx, suite, at)
            config = {"kind": "lm_eval", "limit": suite.limit, "num_fewshot": suite.num_fewshot,
                      "tasks": [{"name": t.name, "file": t.file, "sha256": t.sha256} for t in tasks]}
            metrics = [f"{name}/{t.name}/{m}" for t in tasks for m in t.metrics]
            metrics += [f"{name}/macro/{m}" for m in _macro(tasks)]
        out[name] = ResolvedSuite(name, suite, config, sorted(metrics), broken)
    return out


def _check_metric(ctx: PlanContext, metric: str, known: list[str], at: tuple, what: str,
                  broken: set[str] = frozenset()) -> bool:
    if metric in known or metric.split("/")[0] in broken:  # a broken suite's task error is the one to fix
        return True
    hint = did_you_mean(metric, known)
    suites = sorted({m.split("/")[0] for m in known})
    ctx.error(at, f"no eval produces {what} metric '{metric}'{hint}; metrics are <suite>/<task>/<metric> of the suites "
                  f"{', '.join(suites) or '(none)'}")
    return False


def _chosen_suites(ctx: PlanContext, evals: EvalsSpec, suites: dict[str, ResolvedSuite], index: int, chat: bool) -> list[str]:
    stage = ctx.recipe.stages[index]
    if stage.evals is not None:
        for i, name in enumerate(stage.evals):
            if name not in suites:
                ctx.error(("stages", index, "evals", i), f"unknown suite '{name}'{did_you_mean(name, suites)}; suites: {', '.join(suites)}")
        return [name for name in stage.evals if name in suites]
    last = index == len(ctx.recipe.stages) - 1
    if evals.when == "none" or (evals.when == "end" and not last):
        return []
    wanted = "chat" if chat else "base"
    return [name for name, s in suites.items() if getattr(s.spec, "models", "all") in ("all", wanted)]


def _job_config(evals: EvalsSpec, suites: list[ResolvedSuite], model: dict[str, Any], environment: str,
                dtype: str, chat: bool, backend: str | None = None, threads: int | None = None) -> dict[str, Any]:
    configs: dict[str, Any] = {}
    for suite in suites:
        config = dict(suite.config)
        if isinstance(suite.spec, LmEvalSuite):
            config["chat_template"] = chat if suite.spec.chat_template is None else suite.spec.chat_template
        configs[suite.name] = config
    backend = backend or evals.backend
    return {
        "model": model,
        "backend": backend,
        "environment": environment,
        "dtype": dtype,
        "seed": evals.seed,
        "batch_size": "auto" if backend == "vllm" else 8,
        "threads": threads,
        "suites": configs,
        "metrics": sorted(m for s in suites for m in s.metrics),
    }


def _environment(ctx: PlanContext) -> tuple[str, int]:
    """The environment that runs the harness, and the GPUs of an eval job (one on a GPU cluster, else none)."""
    environment = inference_environment(ctx.recipe.cluster)
    return environment, 1 if environment == "inference-cuda" else 0


def _eval_job(ctx: PlanContext, job_id: str, stage: str, config: dict[str, Any], depends_on: str, gpus: int,
              array: dict[str, int] | None = None) -> Job:
    # The time an eval takes depends on task lengths the compiler cannot see: GPU-hours are unknown on GPUs,
    # and each job gets evals.time_limit.
    est = {"gpu_hours": None if gpus else 0.0, "wall_hours": None, "memory_per_gpu_bytes": None,
           "metrics": len(config["metrics"])}
    assert ctx.recipe.evals is not None
    return Job(id=job_id, stage=stage, kind=EVAL_KIND, entry=JOB_ENTRIES[EVAL_KIND], config=config,
               resources=resources(ctx, nodes_for(ctx.recipe.cluster, gpus), gpus, 1, None, ctx.recipe.evals.time_limit),
               estimates=est, depends_on=[depends_on], array=array)


def _insert_after_stage(ctx: PlanContext, job: Job) -> None:
    """After the stage's last job, so a plan reads stage by stage."""
    position = max(i for i, j in enumerate(ctx.jobs) if j.stage == job.stage)
    ctx.jobs.insert(position + 1, job)


def _stage_eval_jobs(ctx: PlanContext, evals: EvalsSpec, suites: dict[str, ResolvedSuite], environment: str, gpus: int) -> list[str]:
    """One eval job per model-producing job of each stage that runs suites; returns the metrics they produce."""
    produced: list[str] = []
    for index, stage in enumerate(ctx.recipe.stages):
        chat = stage.kind in CHAT_STAGE_KINDS
        names = _chosen_suites(ctx, evals, suites, index, chat)
        if not names:
            continue
        model = ctx.stage_model.get(stage.name, ctx.recipe.model)
        chosen = [suites[n] for n in names]
        produced += [m for s in chosen for m in s.metrics]
        for job in [j for j in ctx.jobs if j.stage == stage.name and j.kind in MODEL_JOB_KINDS]:
            ref = {"job": job.id, "format": "chat" if chat else "base", "max_model_len": model.max_seq_len, "proxies": False}
            config = _job_config(evals, chosen, ref, environment, model.dtype, chat)
            eval_job = _eval_job(ctx, eval_job_id(job.id), stage.name, config, job.id, gpus)
            eval_job.description = stage.description
            _insert_after_stage(ctx, eval_job)
    return produced


def _proxy_suites(ctx: PlanContext, evals: EvalsSpec, suites: dict[str, ResolvedSuite], search: RegMixSearch) -> list[str]:
    if evals.proxies is not None:
        for i, name in enumerate(evals.proxies):
            if name not in suites:
                ctx.error(("evals", "proxies", i), f"unknown suite '{name}'{did_you_mean(name, suites)}; suites: {', '.join(suites)}")
        return [n for n in evals.proxies if n in suites]
    wanted = {term.metric.split("/")[0] for term in search.objective}
    return [name for name in suites if name in wanted]


def _proxy_eval_job(ctx: PlanContext, evals: EvalsSpec, suites: dict[str, ResolvedSuite], search: RegMixSearch,
                    environment: str, gpus: int) -> None:
    names = _proxy_suites(ctx, evals, suites, search)
    chosen = [suites[n] for n in names]
    known = sorted(m for s in chosen for m in s.metrics)
    broken = {s.name for s in suites.values() if s.broken}
    for i, term in enumerate(search.objective):
        _check_metric(ctx, term.metric, known, ("data", "mix", "objective", i, "metric"), "the proxies' objective", broken)
    swarm = next(j for j in ctx.jobs if j.id == SWARM_JOB)
    proxy = search.proxy.model
    ref = {"job": SWARM_JOB, "format": "base", "max_model_len": proxy.max_seq_len, "proxies": True}
    array = dict(swarm.array or {})
    # On a CPU the proxies' evals run side by side, one per core, as the proxies trained.
    threads = max(1, ctx.recipe.cluster.cpus // array.get("parallelism", 1)) if isinstance(ctx.recipe.cluster, LocalCluster) and not gpus else None
    config = _job_config(evals, chosen, ref, environment, proxy.dtype, False, evals.proxy_backend, threads)
    job = _eval_job(ctx, PROXY_EVAL_JOB, swarm.stage, config, SWARM_JOB, gpus, array=array)
    ctx.jobs.insert(ctx.jobs.index(swarm) + 1, job)
    fit = next(j for j in ctx.jobs if j.id == FIT_JOB)
    fit.depends_on = sorted({*fit.depends_on, PROXY_EVAL_JOB})
    fit.config["metrics_job"] = PROXY_EVAL_JOB


def build_eval_jobs(ctx: PlanContext) -> None:
    """Eval jobs for the stages and the swarm; objective and report metric names checked against what they produce."""
    evals, mix = ctx.recipe.evals, ctx.recipe.data.mix
    if evals is None:
        for index, stage in enumerate(ctx.recipe.stages):
            if stage.evals:
                ctx.error(("stages", index, "evals"), "no evals block defines suites: add evals.suites")
        if isinstance(mix, RegMixSearch):
            ctx.error(("data", "mix", "objective"), "the objective's metrics come from eval suites: add an evals block "
                                                    "(e.g. a bpb suite over held-out sets) and name its metrics here")
        return
    suites = resolve_suites(ctx, evals)
    environment, gpus = _environment(ctx)
    produced = _stage_eval_jobs(ctx, evals, suites, environment, gpus)
    if isinstance(mix, RegMixSearch) and any(j.id == SWARM_JOB for j in ctx.jobs):
        _proxy_eval_job(ctx, evals, suites, mix, environment, gpus)
        produced += [m for n in _proxy_suites(ctx, evals, suites, mix) for m in suites[n].metrics]
    every = sorted({m for s in suites.values() for m in s.metrics})
    broken = {s.name for s in suites.values() if s.broken}
    for i, metric in enumerate(evals.report):
        if _check_metric(ctx, metric, every, ("evals", "report", i), "the report's", broken) and metric not in produced \
                and metric.split("/")[0] not in broken:
            ctx.warn(("evals", "report", i), f"'{metric}' is defined but no eval job runs its suite")
    ctx.plan_extras["evals"] = {"metrics": every, "report": list(evals.report)}
