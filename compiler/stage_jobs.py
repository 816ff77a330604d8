"""Stage builders: one function per stage kind turns a stage into plan jobs (a registry, not if/elif).

Job kinds and the runtime functions they will run are listed once, in JOB_ENTRIES.
"""
from __future__ import annotations

import math
from typing import Any, Callable

from compiler import estimates
from compiler.hardware import as_run_on, device_for, gpu_count_problem, nodes_for, parse_time
from compiler.job_common import JOB_ENTRIES, dump, resources, training_config, training_job
from compiler.eval_jobs import build_eval_jobs
from compiler.mix_jobs import build_mix_jobs, resolve_lm_mix
from compiler.plan import Job, PlanContext
from compiler.rl_jobs import build_rl_jobs
from compiler.resolve_training import resolve_scale
from spec.model import ModelSpec
from spec.stages import (
    STAGE_KINDS,
    DpoStage,
    LmStage,
    LongContextStage,
    RlvrStage,
    SftStage,
    StageBase,
)

def _init(ctx: PlanContext, stage: StageBase, index: int) -> tuple[dict[str, Any], list[str]]:
    ref = stage.from_
    if ref is None and index > 0:
        ref = ctx.recipe.stages[index - 1].name
    if ref is None and stage.kind != "pretrain":
        ctx.error(("stages", index, "from"), f"a {stage.kind} stage needs initial weights: set from")
    init, job = ctx.resolve_model_ref(ref, ("stages", index, "from"), index)
    return init, [job] if job else []


def build_lm(ctx: PlanContext, stage: StageBase, index: int, model: ModelSpec) -> ModelSpec:
    assert isinstance(stage, LmStage)
    at = ("stages", index)
    if isinstance(stage, LongContextStage):
        model = _extend_context(ctx, stage, at, model)
    init, deps = _init(ctx, stage, index)
    scale = resolve_scale(stage, model, ctx.recipe.cluster, at, ctx.error)
    mix, mix_deps = resolve_lm_mix(ctx, stage, at, scale.tokens)
    config = {**training_config(stage, model, init, scale), "data": mix}
    training_job(ctx, stage, stage.kind, model, scale, config, deps + mix_deps)
    return model


def _extend_context(ctx: PlanContext, stage: LongContextStage, at: tuple, model: ModelSpec) -> ModelSpec:
    if stage.max_seq_len <= model.max_seq_len:
        ctx.error((*at, "max_seq_len"), f"{stage.max_seq_len} must exceed the model's current max_seq_len {model.max_seq_len}")
    scaling = stage.rope_scaling if stage.rope_scaling is not None else model.rope_scaling
    if scaling is not None and scaling.factor * scaling.original_max_seq_len < stage.max_seq_len:
        ctx.warn((*at, "rope_scaling", "factor"), f"factor {scaling.factor} × original {scaling.original_max_seq_len} = {scaling.factor * scaling.original_max_seq_len:.0f} is below max_seq_len {stage.max_seq_len}")
    return model.model_copy(update={
        "max_seq_len": stage.max_seq_len,
        "rope_scaling": scaling,
        "rope_theta": stage.rope_theta or model.rope_theta,
    })


def _generation_job(ctx: PlanContext, stage: StageBase, index: int, job_kind: str, block_name: str,
                    config: dict[str, Any], refs: list[tuple[str, str]], *, gpus: int, tensor_parallel: int,
                    sequences: int | None, max_tokens: int) -> Job:
    """A vLLM generation job (distillation, delta pairs) feeding a training stage."""
    models, deps = {}, []
    for field_name, ref in refs:
        models[field_name], job = ctx.resolve_model_ref(ref, ("stages", index, block_name, field_name), index)
        deps += [job] if job else []
    cluster = ctx.recipe.cluster
    problem = gpu_count_problem(cluster, gpus)
    if problem:
        ctx.error(("stages", index, block_name, "gpus"), f"generation: {problem}")
    nodes = nodes_for(cluster, gpus)
    per_node = math.ceil(gpus / nodes) if gpus else 0
    known = [ctx.stage_model.get(m.get("stage", "")) for m in models.values()]
    est = _generation_estimates(ctx, known, sequences, max_tokens, gpus, tensor_parallel)
    return ctx.add(Job(
        id=f"{stage.name}-{job_kind.replace('_', '-')}", stage=stage.name, kind=job_kind, entry=JOB_ENTRIES[job_kind],
        config={**config, "models": models}, depends_on=sorted(set(deps)),
        resources=resources(ctx, nodes, per_node, max(1, gpus), est["wall_hours"], None),
        estimates=est,
    ))


GENERATION_BATCH = 256  # sequences an engine decodes at once (vLLM's default max_num_seqs)


def _generation_estimates(ctx: PlanContext, models: list[ModelSpec | None], sequences: int | None,
                          max_tokens: int, gpus: int, tensor_parallel: int) -> dict[str, Any]:
    """Time and memory of generating `sequences` responses of up to `max_tokens` with each model in turn.

    Known only when every model is a stage of this recipe and the prompt count is given; external
    models (a Hugging Face teacher) have no size here. Upper bound: every response at max length,
    prompts ignored (responses dominate), waves of GENERATION_BATCH sequences per engine.
    """
    unknown = {"gpu_hours": None, "wall_hours": None, "memory_per_gpu_bytes": None}
    if sequences is None or not models or any(m is None for m in models):
        return unknown
    device = device_for(ctx.recipe.cluster, gpus, 1)
    engines = max(1, gpus // tensor_parallel)
    seconds, memory = 0.0, 0
    for model in models:
        assert model is not None
        model = as_run_on(model, device)
        batch = min(sequences, engines * GENERATION_BATCH)
        waves = math.ceil(sequences / batch)
        seconds += waves * estimates.rollout_decode_seconds(
            model, sequences=batch, prompt_tokens=0, response_tokens=max_tokens, tensor_parallel=tensor_parallel,
            engines=engines, memory_bandwidth_gbps=device.bandwidth_gbps, peak_tflops=device.peak_tflops, mfu=device.mfu)
        memory = max(memory, estimates.rollout_memory_per_gpu(
            model, tensor_parallel=tensor_parallel, sequences=math.ceil(batch / engines), context_len=max_tokens).total)
    wall = seconds / 3600
    return {"gpu_hours": round(wall * gpus, 4), "wall_hours": round(wall, 4), "memory_per_gpu_bytes": memory,
            "sequences": sequences * len(models)}


def build_sft(ctx: PlanContext, stage: StageBase, index: int, model: ModelSpec) -> ModelSpec:
    assert isinstance(stage, SftStage)
    at = ("stages", index)
    init, deps = _init(ctx, stage, index)
    if stage.distill is not None:
        d = stage.distill
        if d.filters.max_length is not None and d.filters.max_length > model.max_seq_len:
            ctx.error((*at, "distill", "filters", "max_length"), f"{d.filters.max_length} exceeds the model's max_seq_len {model.max_seq_len}")
        gen = _generation_job(ctx, stage, index, "distill", "distill", {"distill": dump(d, exclude={"teacher", "gpus"})},
                              [("teacher", d.teacher)], gpus=d.gpus, tensor_parallel=d.tensor_parallel,
                              sequences=d.num_prompts * d.samples_per_prompt if d.num_prompts else None, max_tokens=d.max_tokens)
        data: dict[str, Any] = {"from_job": gen.id, "file": "sft.jsonl"}
        deps.append(gen.id)
    else:
        assert stage.dataset is not None
        data = dump(stage.dataset)
    scale = resolve_scale(stage, model, ctx.recipe.cluster, at, ctx.error)
    config = {**training_config(stage, model, init, scale), "data": data, "chat_template": stage.chat_template}
    training_job(ctx, stage, "sft", model, scale, config, deps)
    return model


def build_dpo(ctx: PlanContext, stage: StageBase, index: int, model: ModelSpec) -> ModelSpec:
    assert isinstance(stage, DpoStage)
    at = ("stages", index)
    init, deps = _init(ctx, stage, index)
    if stage.delta is not None:
        d = stage.delta
        gen = _generation_job(ctx, stage, index, "delta_pairs", "delta", {"delta": dump(d, exclude={"chosen", "rejected", "gpus"})},
                              [("chosen", d.chosen), ("rejected", d.rejected)], gpus=d.gpus,
                              tensor_parallel=d.tensor_parallel, sequences=d.num_prompts, max_tokens=d.max_tokens)
        pairs: dict[str, Any] = {"from_job": gen.id, "file": "pairs.jsonl"}
        deps.append(gen.id)
    else:
        assert stage.pairs is not None
        pairs = dump(stage.pairs)
    # Each pair is two sequences; the frozen reference adds one forward pass (2N of the 6N per token).
    scale = resolve_scale(stage, model, ctx.recipe.cluster, at, ctx.error, sequences_per_item=2, flops_factor=8 / 6)
    config = {**training_config(stage, model, init, scale), "data": pairs,
              "dpo": {"beta": stage.beta, "loss": stage.loss, "reference": init}}
    training_job(ctx, stage, "dpo", model, scale, config, deps)
    return model


def build_rlvr(ctx: PlanContext, stage: StageBase, index: int, model: ModelSpec) -> ModelSpec:
    assert isinstance(stage, RlvrStage)
    init, deps = _init(ctx, stage, index)
    build_rl_jobs(ctx, stage, index, model, init, deps)
    return model


StageBuilder = Callable[[PlanContext, StageBase, int, ModelSpec], ModelSpec]

STAGE_BUILDERS: dict[str, StageBuilder] = {
    "pretrain": build_lm,
    "midtrain": build_lm,
    "long_context": build_lm,
    "sft": build_sft,
    "dpo": build_dpo,
    "rlvr": build_rlvr,
}
assert set(STAGE_BUILDERS) == set(STAGE_KINDS), "every stage kind needs a builder"


def _check_stage_names(ctx: PlanContext) -> None:
    seen: dict[str, int] = {}
    for i, stage in enumerate(ctx.recipe.stages):
        if stage.name in seen:
            ctx.error(("stages", i, "name"), f"duplicate stage name '{stage.name}' (also stages[{seen[stage.name]}])")
        seen.setdefault(stage.name, i)


def _check_model(ctx: PlanContext, model: ModelSpec, at: tuple) -> None:
    if model.n_heads % model.n_kv_heads:
        ok = [k for k in range(min(model.n_kv_heads, model.n_heads), 0, -1) if model.n_heads % k == 0][0]
        ctx.error((*at, "n_kv_heads"), f"n_heads ({model.n_heads}) must be a multiple of n_kv_heads ({model.n_kv_heads}): use n_kv_heads {ok}")
    if model.rope_scaling is not None and model.rope_scaling.original_max_seq_len > model.max_seq_len:
        ctx.error((*at, "rope_scaling", "original_max_seq_len"), f"{model.rope_scaling.original_max_seq_len} exceeds max_seq_len {model.max_seq_len}")
    if model.sliding_window is not None and model.sliding_window.size >= model.max_seq_len:
        ctx.warn((*at, "sliding_window", "size"), f"window {model.sliding_window.size} is not below max_seq_len {model.max_seq_len}: every layer attends globally")


def build_stage_jobs(ctx: PlanContext) -> None:
    _check_stage_names(ctx)
    _check_model(ctx, ctx.recipe.model, ("model",))
    model = ctx.recipe.model
    for index, stage in enumerate(ctx.recipe.stages):
        # A stage continues the architecture of the stage it starts from (after any context extension).
        model = ctx.stage_model.get(stage.from_ or "", model)
        first_job = len(ctx.jobs)
        model = STAGE_BUILDERS[stage.kind](ctx, stage, index, model)
        for job in ctx.jobs[first_job:]:
            job.description = stage.description
        ctx.stage_model[stage.name] = model
        ctx.stage_job.setdefault(stage.name, stage.name)
    build_mix_jobs(ctx)
    _attach_tokenizer(ctx)
    build_eval_jobs(ctx)  # after the tokenizer: an eval job reads its model's own export (tokenizer included)
    _check_time_limits(ctx)


def _attach_tokenizer(ctx: PlanContext) -> None:
    """Every job that builds a model of this recipe (trainers, sidecars, proxies) reads the same tokenizer."""
    tokenizer = ctx.recipe.data.tokenizer
    if tokenizer is None:
        ctx.warn(("data",), "no data.tokenizer: the plan compiles, but its jobs cannot be launched without one")
    for job in ctx.jobs:
        if "model" in job.config or "proxy" in job.config:
            job.config["tokenizer"] = tokenizer


def _check_time_limits(ctx: PlanContext) -> None:
    """A job longer than its time limit still runs, resumed from checkpoints: say how often."""
    index = {stage.name: i for i, stage in enumerate(ctx.recipe.stages)}
    for job in ctx.jobs:
        wall = job.estimates.get("wall_hours")
        limit = parse_time(job.resources["time_limit"])
        if wall is not None and wall > limit:
            at = ("stages", index[job.stage], "resources") if job.stage in index else ("data", "mix")
            ctx.warn(at, f"job {job.id} needs about {wall:,.0f} h, over its {job.resources['time_limit']} limit: "
                         f"it will be requeued about {_times(math.ceil(wall / limit) - 1)} and resume from checkpoints")


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"
