"""The data mix: fixed weights checked at compile time, or RegMix jobs (swarm array, fit, solve)."""
from __future__ import annotations

from typing import Any

from compiler import estimates
from compiler.diagnostics import did_you_mean
from compiler.hardware import GIB, as_run_on, device_for, gpu_count_problem, nodes_for
from compiler.job_common import JOB_ENTRIES, model_config, resources
from compiler.plan import Job, PlanContext
from spec.cluster import LocalCluster, SlurmCluster
from spec.data import FixedMix, RegMixSearch
from spec.stages import LmStage

MIX_STAGE = "data.mix"
SWARM_JOB, FIT_JOB, SOLVE_JOB = "mix-swarm", "mix-fit", "mix-solve"


def _check_weights(ctx: PlanContext, weights: dict[str, float], at: tuple) -> None:
    sources = ctx.recipe.data.sources
    for name in weights:
        if name not in sources:
            ctx.error((*at, name), f"unknown source '{name}'{did_you_mean(name, sources)}; sources: {', '.join(sources)}")
    total = sum(weights.values())
    if abs(total - 1.0) > 1e-6:
        ctx.error(at, f"weights sum to {total:.6g}; they must sum to 1")


def _check_epochs(ctx: PlanContext, weights: dict[str, float], tokens: int, at: tuple) -> None:
    for name, weight in weights.items():
        source = ctx.recipe.data.sources.get(name)
        if source is not None and weight * tokens > source.tokens:
            ctx.warn((*at, name), f"{weight * tokens / source.tokens:.2f} epochs of '{name}' ({weight * tokens:.3g} of {source.tokens:.3g} tokens)")


def resolve_lm_mix(ctx: PlanContext, stage: LmStage, at: tuple, tokens: int) -> tuple[dict[str, Any], list[str]]:
    """The data block of an LM stage's config, and the jobs it waits for."""
    sources = {name: src.model_dump(mode="json") for name, src in ctx.recipe.data.sources.items()}
    if stage.mix is not None:
        _check_weights(ctx, stage.mix, (*at, "mix"))
        _check_epochs(ctx, stage.mix, tokens, (*at, "mix"))
        return {"sources": sources, "weights": dict(sorted(stage.mix.items()))}, []
    mix = ctx.recipe.data.mix
    if isinstance(mix, FixedMix):
        _check_epochs(ctx, mix.weights, tokens, ("data", "mix", "weights"))
        return {"sources": sources, "weights": dict(sorted(mix.weights.items()))}, []
    ctx.mix_budget_tokens += tokens
    ctx.mix_consumers.append(stage.name)
    return {"sources": sources, "weights": {"from_job": SOLVE_JOB, "file": "mix.json"}}, [SOLVE_JOB]


def _check_constraints(ctx: PlanContext, search: RegMixSearch) -> dict[str, list[float]]:
    """Per-source [min, max] weight after epoch limits; errors when no mixture can satisfy them."""
    at = ("data", "mix", "constraints")
    sources = ctx.recipe.data.sources
    c = search.constraints
    for field in ("min_weight", "max_weight"):
        for name in getattr(c, field):
            if name not in sources:
                ctx.error((*at, field, name), f"unknown source '{name}'{did_you_mean(name, sources)}")
    budget = ctx.mix_budget_tokens
    bounds: dict[str, list[float]] = {}
    reasons: list[str] = []
    for name, source in sources.items():
        low, high = c.min_weight.get(name, 0.0), c.max_weight.get(name, 1.0)
        if c.max_epochs is not None and budget:
            by_epochs = c.max_epochs * source.tokens / budget
            if by_epochs < high:
                high = by_epochs
                reasons.append(f"{name} ≤ {by_epochs:.3g} ({c.max_epochs:g} epochs × {source.tokens:.3g} / {budget:.3g} tokens)")
        if low > high:
            ctx.error((*at, "min_weight", name), f"min weight {low:g} of '{name}' exceeds its max {high:.3g}")
        bounds[name] = [low, high]
    low_sum, high_sum = sum(b[0] for b in bounds.values()), sum(b[1] for b in bounds.values())
    if low_sum > 1 + 1e-9:
        ctx.error((*at, "min_weight"), f"min weights sum to {low_sum:.3g} > 1: no mixture satisfies them")
    if high_sum < 1 - 1e-9:
        why = "; ".join(reasons) if reasons else "max_weight"
        ctx.error(at, f"infeasible: max weights allow at most {high_sum:.3g} in total (< 1): {why}; raise max_epochs or max_weight, or train fewer tokens")
    return bounds


def build_mix_jobs(ctx: PlanContext) -> None:
    """RegMix: a swarm array of proxy trainings, a fit, a solve that writes mix.json. Inserted first."""
    search = ctx.recipe.data.mix
    if isinstance(search, FixedMix):  # checked once, whether or not a stage trains on it
        _check_weights(ctx, search.weights, ("data", "mix", "weights"))
    if not isinstance(search, RegMixSearch):
        return
    if not ctx.mix_consumers:
        ctx.warn(("data", "mix"), "no stage trains on the RegMix solution (every LM stage sets its own mix)")
    bounds = _check_constraints(ctx, search)
    proxy = search.proxy
    at = ("data", "mix", "proxy")
    if proxy.seq_len > proxy.model.max_seq_len:
        ctx.error((*at, "seq_len"), f"{proxy.seq_len} exceeds the proxy's max_seq_len {proxy.model.max_seq_len}")
    cluster = ctx.recipe.cluster
    problem = gpu_count_problem(cluster, proxy.gpus)
    if problem:
        ctx.error((*at, "gpus"), f"a proxy: {problem}")
    device = device_for(cluster, proxy.gpus, 1)
    model = as_run_on(proxy.model, device)
    flops = estimates.training_flops_per_token(model, proxy.seq_len)
    hours_each = estimates.train_gpu_hours(flops, proxy.tokens, device.peak_tflops, device.mfu, 1)
    micro = proxy.micro_batch_size or proxy.global_batch_sequences
    if proxy.global_batch_sequences % micro:
        ctx.error((*at, "micro_batch_size"), f"{micro} must divide global_batch_sequences {proxy.global_batch_sequences}")
    memory = estimates.training_memory_per_gpu(model, seq_len=proxy.seq_len, micro_batch_size=micro, fsdp=1)
    if memory.total > device.memory_bytes:
        ctx.error((*at, "micro_batch_size"), f"a proxy needs {memory.total / GIB:.1f} GiB per {'GPU' if device.kind == 'gpu' else 'process'}, the {device.name} has {device.memory_bytes / GIB:.0f}: lower micro_batch_size (now {micro})")
    fewest = max(2 * search.regressor.cv_folds, 8)  # as runtime.regmix.fit.FitSettings.min_runs: two runs per fold
    if search.swarm_size < fewest:
        # a warning, not an error: launcher tests run tiny swarms of stand-in jobs that never fit
        ctx.warn(("data", "mix", "swarm_size"), f"{search.swarm_size} proxies are too few for the fit's "
                 f"{search.regressor.cv_folds}-fold CV (at least {fewest}): mix-fit will fail after the swarm")
    sources = {name: src.model_dump(mode="json") for name, src in ctx.recipe.data.sources.items()}
    nodes = nodes_for(cluster, proxy.gpus)
    swarm = Job(
        id=SWARM_JOB, stage=MIX_STAGE, kind="regmix_swarm", entry=JOB_ENTRIES["regmix_swarm"],
        config={
            "proxy": {**proxy.model_dump(mode="json"), "model": model_config(proxy.model)},
            "sources": sources, "sampling": search.sampling.model_dump(mode="json"), "seed": search.seed,
            "swarm_size": search.swarm_size, "bounds": bounds, "objective": [t.model_dump(mode="json") for t in search.objective],
        },
        resources=resources(ctx, nodes, proxy.gpus, 1, hours_each, None),
        estimates={
            "params": estimates.param_counts(proxy.model).total, "tokens": proxy.tokens * search.swarm_size,
            "memory_per_gpu_bytes": memory.total, "flops_per_token": flops,
            "gpu_hours": round(hours_each * search.swarm_size, 4) if proxy.gpus else 0.0,
            "wall_hours": round(hours_each, 4),
        },
        array={"size": search.swarm_size, "parallelism": _array_parallelism(ctx, proxy.gpus, search.swarm_size)},
    )
    cpu_only = {"gpu_hours": 0.0, "wall_hours": None, "memory_per_gpu_bytes": None}
    fit = Job(
        id=FIT_JOB, stage=MIX_STAGE, kind="regmix_fit", entry=JOB_ENTRIES["regmix_fit"], depends_on=[SWARM_JOB],
        config={"regressor": search.regressor.model_dump(mode="json"), "objective": swarm.config["objective"], "seed": search.seed},
        resources=resources(ctx, 1, 0, 1, 0.25, None), estimates=dict(cpu_only),
    )
    solve = Job(
        id=SOLVE_JOB, stage=MIX_STAGE, kind="regmix_solve", entry=JOB_ENTRIES["regmix_solve"], depends_on=[FIT_JOB],
        config={"solver": search.solver.model_dump(mode="json"), "bounds": bounds, "sampling": swarm.config["sampling"], "seed": search.seed},
        resources=resources(ctx, 1, 0, 1, 0.25, None), estimates=dict(cpu_only),
    )
    if search.solver.top_k > search.solver.candidates:
        ctx.error(("data", "mix", "solver", "top_k"), f"top_k {search.solver.top_k} exceeds candidates {search.solver.candidates}")
    ctx.jobs[:0] = [swarm, fit, solve]


def _array_parallelism(ctx: PlanContext, gpus_each: int, size: int) -> int:
    """How many proxies run at once: as many as fit on the cluster; on a CPU one per core (a proxy trains on one
    thread: its matrices are too small for a second to pay)."""
    cluster = ctx.recipe.cluster
    if gpus_each == 0:
        cores = cluster.cpus if isinstance(cluster, LocalCluster) else cluster.max_nodes * 8  # a CPU job: 1/8 node
        return max(1, min(size, cores))
    total = cluster.max_nodes * cluster.gpus_per_node if isinstance(cluster, SlurmCluster) else cluster.gpus
    return max(1, min(size, total // gpus_each))
