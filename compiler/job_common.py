"""What every job builder needs: the job-kind registry, config dumps, and resources."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from compiler import estimates
from compiler.hardware import time_limit_for
from compiler.plan import Job, PlanContext
from compiler.resolve_training import TrainingScale, scale_summary
from spec.cluster import LocalCluster, SlurmCluster
from spec.model import ModelSpec
from spec.stages import StageBase

JOB_ENTRIES: dict[str, str] = {
    "pretrain": "runtime.train:run_lm",
    "midtrain": "runtime.train:run_lm",
    "long_context": "runtime.train:run_lm",
    "sft": "runtime.train:run_sft",
    "dpo": "runtime.train:run_dpo",
    "rlvr_trainer": "runtime.rl:run_trainer",
    "rlvr_rollout": "runtime.rollout:run_sidecar",
    "distill": "runtime.generate:run_distill",
    "delta_pairs": "runtime.generate:run_delta_pairs",
    "decontaminate": "runtime.generate:run_decontaminate",
    "regmix_swarm": "runtime.regmix:run_proxy",
    "regmix_fit": "runtime.regmix:run_fit",
    "regmix_solve": "runtime.regmix:run_solve",
    "eval": "runtime.evals:run_eval",
}

def inference_environment(cluster: LocalCluster | SlurmCluster) -> str:
    """The environment of jobs that run vLLM or lm-eval (runtime.environments): vLLM's CPU build pins another torch
    than the trainer's, and a GPU cluster runs the CUDA build."""
    return "inference-cuda" if isinstance(cluster, SlurmCluster) or cluster.gpus > 0 else "inference-cpu"


@dataclass(frozen=True)
class Engines:
    """The vLLM engines of a serving job: `total` of `tensor_parallel` GPUs each, `per_node` on each of its nodes,
    which are given `node_gpus` GPUs each."""

    total: int
    per_node: int
    node_gpus: int

    def settings(self, serving: dict[str, Any]) -> dict[str, Any]:
        """A serving job's settings with `data_parallel` when it starts more than one engine, and
        `data_parallel_local` when they span nodes; absent means one, so that plans which start one keep their
        hashes (and their cached runs)."""
        if self.total <= 1:
            return serving
        spread = {"data_parallel_local": self.per_node} if self.per_node < self.total else {}
        return {**serving, "data_parallel": self.total, **spread}


def data_parallel_engines(ctx: PlanContext, at: tuple, gpus: int, nodes: int, tensor_parallel: int, what: str) -> Engines:
    """The vLLM engines of `tensor_parallel` GPUs a serving job starts: as many as each node holds, on every node
    (`--data-parallel-size`; the first node's API server spreads requests over them all, runtime/rollout/engines.py).
    GPUs left over on a node (its count not a multiple of `tensor_parallel`) stay idle, with a warning."""
    if gpus == 0:
        return Engines(1, 1, 0)
    nodes = max(1, nodes)
    node_gpus = math.ceil(gpus / nodes)
    per_node = max(1, node_gpus // tensor_parallel)
    idle = node_gpus - per_node * tensor_parallel
    if idle > 0:
        ctx.warn(at, f"{what} starts {per_node} vLLM engine(s) of {tensor_parallel} GPU(s) on each of its {nodes} "
                     f"node(s): {idle} of each node's {node_gpus} GPUs stay idle")
    return Engines(per_node * nodes, per_node, node_gpus)


def dump(obj: Any, *, exclude: set[str] = frozenset()) -> Any:
    return obj.model_dump(mode="json", by_alias=True, exclude=exclude)


def model_config(model: ModelSpec) -> dict[str, Any]:
    return {**dump(model), "head_dim": model.resolved_head_dim}


def resources(ctx: PlanContext, nodes: int, gpus_per_node: int, processes: int, wall_hours: float | None,
              requested: str | None, *, sharers: int = 1) -> dict[str, Any]:
    """`sharers`: how many jobs run at once on a CPU-only local cluster (an RL group's trainer and sidecar): each
    asks for its share of the cores and memory, which is also how the local launcher pins them."""
    cluster = ctx.recipe.cluster
    slurm = isinstance(cluster, SlurmCluster)
    gpus = nodes * gpus_per_node
    if slurm:
        # A GPU job gets its GPUs' share of the node; a CPU-only job (mix fit/solve) an eighth of a node.
        share = gpus_per_node / cluster.gpus_per_node if gpus_per_node else 1 / 8
        cpus, memory = int(cluster.cpus_per_node * share), int(cluster.memory_per_node_gib * share)
    elif gpus_per_node == 0 and cluster.gpus == 0:
        cpus, memory = cluster.cpus // sharers, int(cluster.memory_gib) // sharers
    else:
        cpus, memory = cluster.cpus, int(cluster.memory_gib)
    return {
        "nodes": nodes,
        "gpus_per_node": gpus_per_node,
        "gpus": gpus,
        "processes": processes,
        "cpus_per_node": max(1, cpus),
        "memory_gib_per_node": max(1, memory),
        "time_limit": time_limit_for(cluster, wall_hours, requested),
        "partition": cluster.partition if slurm else None,
        "account": cluster.account if slurm else None,
        "qos": cluster.qos if slurm else None,
    }




def training_estimates(model: ModelSpec, scale: TrainingScale) -> dict[str, Any]:
    counts = estimates.param_counts(model)
    memory = scale.memory
    assert memory is not None
    gpu = scale.device.kind == "gpu"
    return {
        "params": counts.total,
        "non_embedding_params": counts.non_embedding,
        "flops_per_token": scale.flops_per_token,
        "tokens": scale.tokens,
        "steps": scale.steps,
        "memory_per_gpu_bytes": memory.total,
        "memory_breakdown_bytes": {
            "params": memory.params, "grads": memory.grads, "optimizer": memory.optimizer,
            "activations": memory.activations, "logits": memory.logits, "buffers": memory.buffers,
        },
        "gpu_hours": round(scale.compute_hours, 4) if gpu else 0.0,
        "wall_hours": round(scale.wall_hours(), 4),
    }


def training_config(stage: StageBase, model: ModelSpec, init: dict[str, Any], scale: TrainingScale) -> dict[str, Any]:
    return {
        "stage": stage.name,
        "kind": stage.kind,
        "model": model_config(model),
        "init": init,
        "optim": {
            "lr": stage.lr,
            "schedule": dump(stage.schedule),
            "optimizer": dump(stage.optimizer),
            "grad_clip": stage.grad_clip,
        },
        "scale": scale_summary(scale),
        "activation_checkpointing": stage.activation_checkpointing,
        "checkpoint_every": stage.checkpoint_every,
        "seed": stage.seed,
    }


def training_job(ctx: PlanContext, stage: StageBase, job_kind: str, model: ModelSpec, scale: TrainingScale,
                  config: dict[str, Any], depends_on: list[str], job_id: str | None = None) -> Job:
    est = training_estimates(model, scale)
    return ctx.add(Job(
        id=job_id or stage.name, stage=stage.name, kind=job_kind, entry=JOB_ENTRIES[job_kind], config=config,
        resources=resources(ctx, scale.nodes, scale.gpus_per_node, scale.processes, est["wall_hours"], stage.resources.time_limit),
        estimates=est, depends_on=sorted(set(depends_on)),
    ))
