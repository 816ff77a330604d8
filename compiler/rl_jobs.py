"""RLVR: a GRPO trainer job and a vLLM rollout-sidecar job that start together and find each other.

Timing model per RL step: the trainer's update (forward+backward, plus a log-prob recompute and a
reference pass when asked) and the sidecar's generation (decode-bound, see estimates) run one
after the other when `max_staleness` is 0 and overlap when it is 1 or more. With active sampling a step
draws one to `max_sampling_rounds` batches of prompts: the estimate counts one (`generate_max` all of them).
A `prompt_filter` samples every prompt before step 1; the prompt count is data the compiler does not read, so its
cost is given per thousand prompts.
"""
from __future__ import annotations

import math
from typing import Any

from compiler import estimates
from compiler.hardware import GIB, as_run_on, device_for, gpu_count_problem, nodes_for
from compiler.job_common import (JOB_ENTRIES, data_parallel_engines, dump, inference_environment, resources,
                                 training_config, training_estimates)
from compiler.plan import Job, PlanContext
from compiler.resolve_training import resolve_scale
from spec.cluster import SlurmCluster
from spec.model import ModelSpec
from spec.stages import RlvrStage


def _check_lengths(ctx: PlanContext, stage: RlvrStage, at: tuple, model: ModelSpec) -> None:
    r, g = stage.rollout, stage.grpo
    need = r.max_prompt_tokens + g.max_response_tokens
    if need > r.max_model_len:
        ctx.error((*at, "rollout", "max_model_len"), f"{r.max_model_len} is less than max_prompt_tokens {r.max_prompt_tokens} + grpo.max_response_tokens {g.max_response_tokens} = {need}: raise max_model_len to {need} or shorten responses")
    if r.max_model_len > model.max_seq_len:
        ctx.error((*at, "rollout", "max_model_len"), f"{r.max_model_len} exceeds the model's max_seq_len {model.max_seq_len} at this stage")
    if r.gpus and r.gpus % r.tensor_parallel:
        ctx.error((*at, "rollout", "tensor_parallel"), f"tensor_parallel {r.tensor_parallel} must divide the sidecar's {r.gpus} GPUs")
    problem = gpu_count_problem(ctx.recipe.cluster, r.gpus)
    if problem:
        ctx.error((*at, "rollout", "gpus"), f"the sidecar: {problem}")
    if model.n_heads % r.tensor_parallel:
        ctx.error((*at, "rollout", "tensor_parallel"), f"tensor_parallel {r.tensor_parallel} must divide n_heads {model.n_heads}")


def _check_sampling(ctx: PlanContext, stage: RlvrStage, at: tuple) -> None:
    g = stage.grpo
    if "max_sampling_rounds" in g.model_fields_set and not g.active_sampling:
        ctx.warn((*at, "grpo", "max_sampling_rounds"), "has no effect without active_sampling: true")


def _check_weight_sync(ctx: PlanContext, stage: RlvrStage, at: tuple, trainer_gpus: int) -> None:
    r = stage.rollout
    if r.weight_sync != "nccl":
        return
    field = (*at, "rollout", "weight_sync")
    if r.gpus == 0 or trainer_gpus == 0:
        side = "the sidecar" if r.gpus == 0 else "the trainer"
        ctx.error(field, f"nccl broadcasts from the trainer's GPU into the sidecar's, and {side} has none: use filesystem")
    elif r.gpus != r.tensor_parallel:
        ctx.error(field, f"nccl reaches one vLLM engine of tensor_parallel GPUs, and the sidecar has {r.gpus // r.tensor_parallel} "
                         f"({r.gpus} GPUs, tensor_parallel {r.tensor_parallel}): set gpus to tensor_parallel, or use filesystem")


def _rollout_memory(ctx: PlanContext, stage: RlvrStage, at: tuple, model: ModelSpec, rollouts: int,
                    engines: int) -> estimates.RolloutMemory:
    r = stage.rollout
    device = device_for(ctx.recipe.cluster, r.gpus, 1)
    model = as_run_on(model, device)
    per_engine = min(r.max_num_seqs, math.ceil(rollouts / engines))
    memory = estimates.rollout_memory_per_gpu(model, tensor_parallel=r.tensor_parallel, sequences=per_engine, context_len=r.max_model_len)
    budget = device.memory_bytes * (r.gpu_memory_utilization if device.kind == "gpu" else 1.0)
    if memory.weights > budget:
        ctx.error((*at, "rollout", "tensor_parallel"), f"the weights need {memory.weights / GIB:.1f} GiB per GPU, vLLM may use {budget / GIB:.1f}: raise tensor_parallel")
    elif memory.total > budget:
        fits = int((budget - memory.weights) // max(1, memory.kv_cache // per_engine))
        ctx.warn((*at, "rollout"), f"KV cache for {per_engine} sequences × {r.max_model_len} tokens needs {memory.total / GIB:.1f} GiB per GPU, vLLM may use {budget / GIB:.1f}: about {fits} run at once")
    return memory


def _generation_seconds(ctx: PlanContext, stage: RlvrStage, model: ModelSpec, rollouts: int, engines: int) -> float:
    r = stage.rollout
    device = device_for(ctx.recipe.cluster, r.gpus, 1)
    return estimates.rollout_decode_seconds(
        as_run_on(model, device),
        sequences=rollouts, prompt_tokens=r.max_prompt_tokens, response_tokens=stage.grpo.max_response_tokens,
        tensor_parallel=r.tensor_parallel, engines=engines,
        memory_bandwidth_gbps=device.bandwidth_gbps, peak_tflops=device.peak_tflops, mfu=device.mfu,
    )


def build_rl_jobs(ctx: PlanContext, stage: RlvrStage, index: int, model: ModelSpec, init: dict[str, Any], deps: list[str]) -> None:
    at = ("stages", index)
    _check_lengths(ctx, stage, at, model)
    _check_sampling(ctx, stage, at)
    rollouts = stage.grpo.prompts_per_step * stage.grpo.group_size
    passes = 6 + (2 if stage.async_.logprobs == "recompute" else 0) + (2 if stage.grpo.kl_coef > 0 else 0)
    scale = resolve_scale(stage, model, ctx.recipe.cluster, at, ctx.error, seq_len=stage.seq_len or stage.rollout.max_model_len,
                          default_global_batch=rollouts, flops_factor=passes / 6)
    if rollouts % scale.global_batch_sequences:
        ctx.error((*at, "global_batch_sequences"), f"{scale.global_batch_sequences} must divide the {rollouts} rollouts per step (prompts_per_step × group_size)")
    mini_batches = max(1, rollouts // scale.global_batch_sequences)
    _check_weight_sync(ctx, stage, at, scale.gpus)
    r = stage.rollout
    sidecar_nodes = r.nodes if isinstance(ctx.recipe.cluster, SlurmCluster) else nodes_for(ctx.recipe.cluster, r.gpus)
    engines = data_parallel_engines(ctx, (*at, "rollout", "gpus"), r.gpus, sidecar_nodes, r.tensor_parallel, "the sidecar")
    rollout_memory = _rollout_memory(ctx, stage, at, model, rollouts, engines.total)

    train_s = scale.compute_hours * 3600 * mini_batches / scale.steps / scale.processes
    gen_s = _generation_seconds(ctx, stage, model, rollouts, engines.total)
    overlapped = stage.async_.max_staleness > 0
    step_s = max(train_s, gen_s) if overlapped else train_s + gen_s
    wall_h = scale.steps * step_s / 3600

    variants = [("", "verifiers")] + [(f"-{c.replace('_', '-')}", c) for c in stage.controls]
    for suffix, reward in variants:
        trainer_id, rollout_id = f"{stage.name}{suffix}", f"{stage.name}{suffix}-rollout"
        rl = {
            # a recipe without a prompt filter keeps the job hashes it had before the field existed (cached runs)
            "grpo": dump(stage.grpo, exclude=set() if stage.grpo.prompt_filter else {"prompt_filter"}), "async": dump(stage.async_), "rewards": [dump(w) for w in stage.rewards],
            "reward_mode": reward, "rollouts_per_step": rollouts, "mini_batches_per_step": mini_batches,
            "rollout_job": rollout_id, "weight_sync": r.weight_sync, "sidecar_tensor_parallel": r.tensor_parallel,
        }
        config = {**training_config(stage, model, init, scale), "prompts": dump(stage.prompts), "rl": rl}
        est = {**training_estimates(model, scale), "wall_hours": round(wall_h, 4),
               "gpu_hours": round(wall_h * scale.gpus, 4), "step_seconds": {"train": round(train_s, 3), "generate": round(gen_s, 3), "step": round(step_s, 3)},
               "rollouts_per_step": rollouts}
        if stage.grpo.active_sampling:  # each extra draw is another generation of the same size
            est["step_seconds"]["generate_max"] = round(gen_s * stage.grpo.max_sampling_rounds, 3)
        if stage.grpo.prompt_filter is not None:  # one pass over the prompts before step 1 (their count is data)
            samples = stage.grpo.prompt_filter.samples_per_prompt
            est["prompt_filter_seconds_per_1k_prompts"] = round(gen_s * 1000 * samples / rollouts, 3)
        ctx.add(Job(
            id=trainer_id, stage=stage.name, kind="rlvr_trainer", entry=JOB_ENTRIES["rlvr_trainer"], config=config,
            resources=resources(ctx, scale.nodes, scale.gpus_per_node, scale.processes, wall_h, stage.resources.time_limit,
                                sharers=2),
            estimates=est, depends_on=sorted(set(deps)), group=trainer_id,
        ))
        ctx.add(Job(
            id=rollout_id, stage=stage.name, kind="rlvr_rollout", entry=JOB_ENTRIES["rlvr_rollout"],
            config={"model": config["model"], "init": init, "rollout": engines.settings(dump(r)),
                    "trainer_job": trainer_id,
                    "environment": inference_environment(ctx.recipe.cluster),
                    "sampling": {"temperature": stage.grpo.temperature, "max_tokens": stage.grpo.max_response_tokens,
                                 "logprobs_mode": "processed_logprobs"}},
            # one task per node: vLLM starts its own worker per GPU
            resources=resources(ctx, sidecar_nodes, engines.node_gpus, sidecar_nodes, wall_h,
                                stage.resources.time_limit, sharers=2),
            estimates={"params": estimates.param_counts(model).total, "memory_per_gpu_bytes": rollout_memory.total,
                       "memory_breakdown_bytes": {"weights": rollout_memory.weights, "kv_cache": rollout_memory.kv_cache},
                       "kv_cache_bytes_per_token": estimates.kv_cache_bytes_per_token(model),
                       "gpu_hours": round(wall_h * r.gpus, 4), "wall_hours": round(wall_h, 4)},
            depends_on=sorted(set(deps)), group=trainer_id,
        ))
