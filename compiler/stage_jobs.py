"""Stage builders: one function per stage kind turns a stage into plan jobs (a registry, not if/elif).

Job kinds and the runtime functions they will run are listed once, in JOB_ENTRIES.
"""
from __future__ import annotations

import math
from typing import Any, Callable

from compiler.hardware import parse_time
from compiler.job_common import dump, training_config, training_job
from compiler.decontam_jobs import build_decontam_job
from compiler.eval_jobs import build_eval_jobs
from compiler.generation_jobs import build_delta_job, build_distill_job
from compiler.mix_jobs import build_mix_jobs, resolve_lm_mix
from compiler.plan import PlanContext
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


def build_sft(ctx: PlanContext, stage: StageBase, index: int, model: ModelSpec) -> ModelSpec:
    assert isinstance(stage, SftStage)
    at = ("stages", index)
    init, deps = _init(ctx, stage, index)
    if stage.distill is not None:
        gen = build_distill_job(ctx, stage, index, stage.distill, model)
        data: dict[str, Any] = {"from_job": gen.id, "file": gen.config["output"], "text_field": "messages"}
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
        gen = build_delta_job(ctx, stage, index, stage.delta, model)
        pairs: dict[str, Any] = {"from_job": gen.id, "file": gen.config["output"]}
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
    build_decontam_job(ctx)  # after every job that reads a dataset, before the eval jobs (which read eval data)
    _attach_tokenizer(ctx)
    build_eval_jobs(ctx)  # after the tokenizer: an eval job reads its model's own export (tokenizer included)
    _check_time_limits(ctx)


def _attach_tokenizer(ctx: PlanContext) -> None:
    """Every job that builds a model of this recipe (trainers, sidecars, proxies) reads the same tokenizer."""
    tokenizer = ctx.recipe.data.tokenizer
    if tokenizer is None:
        ctx.warn(("data",), "no data.tokenizer: the plan compiles, but its jobs cannot be launched without one")
    for job in ctx.jobs:
        if "model" in job.config or "proxy" in job.config or job.kind in ("distill", "delta_pairs"):
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
