"""Generation jobs feeding post-training stages: `<stage>-distill` (SFT data) and `<stage>-delta-pairs` (DPO pairs).

Each generator is either a model the job serves itself with vLLM (an earlier stage, a Hugging Face id, a folder:
the job then needs the block's GPUs) or an external OpenAI-compatible endpoint (no GPUs for it). The job writes one
data file that the training stage reads (`{"from_job", "file"}`), decontaminated against the recipe's eval sets
when the recipe declares them.
"""
from __future__ import annotations

import math
from typing import Any

from compiler import estimates
from compiler.hardware import as_run_on, device_for, gpu_count_problem, nodes_for
from compiler.job_common import JOB_ENTRIES, data_parallel_engines, dump, inference_environment, resources
from compiler.plan import Job, PlanContext
from spec.generation import Delta, Distill, Endpoint, GenerationSettings
from spec.model import ModelSpec
from spec.stages import StageBase

OUTPUT_FILES = {"distill": "sft", "delta_pairs": "pairs"}  # folders: train.jsonl and validation.jsonl


def build_distill_job(ctx: PlanContext, stage: StageBase, index: int, d: Distill, model: ModelSpec) -> Job:
    at = ("stages", index, "distill")
    if d.filters.max_length is not None and d.filters.max_length > model.max_seq_len:
        ctx.error((*at, "filters", "max_length"), f"{d.filters.max_length} exceeds the model's max_seq_len {model.max_seq_len}")
    sequences = d.num_prompts * d.samples_per_prompt if d.num_prompts else None
    return _generation_job(ctx, stage, index, "distill", d, [("teacher", d.teacher)], model, sequences)


def build_delta_job(ctx: PlanContext, stage: StageBase, index: int, d: Delta, model: ModelSpec) -> Job:
    if d.chosen == d.rejected:
        ctx.error(("stages", index, "delta", "rejected"), "rejected is the chosen model: the pairs would carry no delta")
    return _generation_job(ctx, stage, index, "delta_pairs", d, [("chosen", d.chosen), ("rejected", d.rejected)],
                           model, d.num_prompts)


def _generation_job(ctx: PlanContext, stage: StageBase, index: int, job_kind: str, block: GenerationSettings,
                    roles: list[tuple[str, str | Endpoint]], model: ModelSpec, sequences: int | None) -> Job:
    block_name = "distill" if job_kind == "distill" else "delta"
    at = ("stages", index, block_name)
    models: dict[str, Any] = {}
    deps: list[str] = []
    served: list[ModelSpec | None] = []
    for role, ref in roles:
        if isinstance(ref, Endpoint):
            models[role] = {"kind": "endpoint", **dump(ref)}
            continue
        models[role], job = ctx.resolve_model_ref(ref, (*at, role), index)
        deps += [job] if job else []
        served.append(ctx.stage_model.get(models[role].get("stage", "")))
    max_model_len = block.max_model_len or max([m.max_seq_len for m in served if m is not None] or [model.max_seq_len])
    if served and block.max_tokens >= max_model_len:
        ctx.error((*at, "max_tokens"), f"{block.max_tokens} leaves no room for the prompt in max_model_len {max_model_len}")
    gpus = block.gpus if served else 0  # endpoints only: nothing to serve here
    cluster = ctx.recipe.cluster
    problem = gpu_count_problem(cluster, gpus)
    if problem:
        ctx.error((*at, "gpus"), f"generation: {problem}")
    nodes = nodes_for(cluster, gpus)
    engines = data_parallel_engines(ctx, (*at, "gpus"), gpus, nodes, block.tensor_parallel, "generation")
    est = _generation_estimates(ctx, served, sequences, block.max_tokens, gpus, block.tensor_parallel, engines.total,
                                block.max_num_seqs)
    settings = dump(block, exclude={"teacher", "chosen", "rejected", "gpus"})
    config: dict[str, Any] = {block_name: settings, "models": models, "output": OUTPUT_FILES[job_kind],
                              "serve": engines.settings({"gpus": gpus, "max_model_len": max_model_len,
                                                        "environment": inference_environment(cluster)})}
    return ctx.add(Job(
        id=f"{stage.name}-{job_kind.replace('_', '-')}", stage=stage.name, kind=job_kind, entry=JOB_ENTRIES[job_kind],
        config=config, depends_on=sorted(set(deps)),
        resources=resources(ctx, nodes, engines.node_gpus, nodes, est["wall_hours"], None),  # one task per node
        estimates=est,
    ))


def _generation_estimates(ctx: PlanContext, models: list[ModelSpec | None], sequences: int | None,
                          max_tokens: int, gpus: int, tensor_parallel: int, engines: int,
                          max_num_seqs: int) -> dict[str, Any]:
    """Time and memory of generating `sequences` responses of up to `max_tokens` with each served model in turn.

    Known only when every served model is a stage of this recipe and the prompt count is given; external
    models (a Hugging Face teacher, an endpoint) have no size here. Upper bound: every response at max length,
    prompts ignored (responses dominate), waves of `max_num_seqs` sequences per engine.
    """
    unknown = {"gpu_hours": None, "wall_hours": None, "memory_per_gpu_bytes": None}
    if sequences is None or not models or any(m is None for m in models):
        return unknown
    device = device_for(ctx.recipe.cluster, gpus, 1)
    seconds, memory = 0.0, 0
    for model in models:
        assert model is not None
        model = as_run_on(model, device)
        batch = min(sequences, engines * max_num_seqs)
        waves = math.ceil(sequences / batch)
        seconds += waves * estimates.rollout_decode_seconds(
            model, sequences=batch, prompt_tokens=0, response_tokens=max_tokens, tensor_parallel=tensor_parallel,
            engines=engines, memory_bandwidth_gbps=device.bandwidth_gbps, peak_tflops=device.peak_tflops, mfu=device.mfu)
        memory = max(memory, estimates.rollout_memory_per_gpu(
            model, tensor_parallel=tensor_parallel, sequences=math.ceil(batch / engines), context_len=max_tokens).total)
    wall = seconds / 3600
    return {"gpu_hours": round(wall * gpus, 4), "wall_hours": round(wall, 4), "memory_per_gpu_bytes": memory,
            "sequences": sequences * len(models)}
