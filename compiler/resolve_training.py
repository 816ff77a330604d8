"""Resolve one training job's scale: GPUs, parallelism, batch arithmetic, duration, memory and time.

Every mismatch becomes a located diagnostic with the numbers and a fix, at compile time,
instead of an assertion hours into an allocation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from compiler import estimates
from compiler.hardware import GIB, Device, as_run_on, device_for, gpus_per_node
from spec.cluster import LocalCluster, SlurmCluster
from spec.model import ModelSpec
from spec.stages import StageBase

Report = Callable[[tuple[str | int, ...], str], None]


@dataclass
class TrainingScale:
    """The resolved numbers of one training job."""

    nodes: int
    gpus_per_node: int
    processes: int  # world size: GPUs, or CPU processes
    device: Device
    parallelism: dict[str, int]
    seq_len: int
    global_batch_sequences: int
    micro_batch_size: int
    grad_accum: int
    tokens_per_step: int
    steps: int
    tokens: int
    warmup_steps: int
    memory: estimates.TrainingMemory | None = None
    flops_per_token: float = 0.0
    compute_hours: float = 0.0  # device-hours of compute (GPU-hours on GPUs, process-hours on CPU)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def gpus(self) -> int:
        return self.processes if self.device.kind == "gpu" else 0

    def wall_hours(self) -> float:
        return self.compute_hours / self.processes


def _world(stage: StageBase, cluster: LocalCluster | SlurmCluster, at: tuple, error: Report) -> tuple[int, int, int]:
    """(nodes, gpus_per_node, processes) of the stage's trainer."""
    res = stage.resources
    per_node = res.gpus_per_node if res.gpus_per_node is not None else gpus_per_node(cluster)
    if isinstance(cluster, SlurmCluster):
        if per_node == 0 or per_node > cluster.gpus_per_node:
            error((*at, "resources", "gpus_per_node"), f"must be 1..{cluster.gpus_per_node} on {cluster.name} (got {per_node})")
            per_node = cluster.gpus_per_node
        if res.nodes > cluster.max_nodes:
            error((*at, "resources", "nodes"), f"{cluster.name} allows at most {cluster.max_nodes} nodes per job (got {res.nodes})")
        return res.nodes, per_node, res.nodes * per_node
    if res.nodes != 1:
        error((*at, "resources", "nodes"), f"a local cluster has one node (got {res.nodes})")
    if per_node > cluster.gpus:
        error((*at, "resources", "gpus_per_node"), f"this machine has {cluster.gpus} GPUs (got {per_node})")
    if per_node > 0:
        return 1, per_node, per_node
    return 1, 0, res.processes or 1


def _parallelism(stage: StageBase, model: ModelSpec, world: int, at: tuple, error: Report) -> dict[str, int]:
    p = stage.parallelism
    tp, pp, cp, rep = p.tp or 1, p.pp or 1, p.cp or 1, p.dp_replicate or 1
    where = (*at, "parallelism")
    fsdp = p.fsdp
    if fsdp is None:
        if world % (tp * pp * cp * rep):
            error(where, f"tp {tp} × pp {pp} × cp {cp} × dp_replicate {rep} = {tp * pp * cp * rep} does not divide the {world} processes")
        fsdp = max(1, world // (tp * pp * cp * rep))
    product = fsdp * tp * pp * cp * rep
    if product != world:
        fix = world // (tp * pp * cp * rep) if world % (tp * pp * cp * rep) == 0 else None
        hint = f": set fsdp to {fix}" if fix else ""
        error(where, f"fsdp {fsdp} × tp {tp} × pp {pp} × cp {cp} × dp_replicate {rep} = {product}, but the stage has {world} processes{hint}")
    if model.n_heads % tp or model.n_kv_heads % tp and tp % model.n_kv_heads:
        error((*where, "tp"), f"tp {tp} must divide n_heads ({model.n_heads}) and n_kv_heads ({model.n_kv_heads}) or be a multiple of it")
    if pp > model.n_layers:
        error((*where, "pp"), f"pp {pp} exceeds n_layers ({model.n_layers})")
    return {"fsdp": fsdp, "dp_replicate": rep, "tp": tp, "pp": pp, "cp": cp}


def _global_batch(stage: StageBase, seq_len: int, default: int | None, at: tuple, error: Report) -> int:
    if stage.global_batch_sequences is not None:
        return stage.global_batch_sequences
    if stage.global_batch_tokens is not None:
        if stage.global_batch_tokens % seq_len:
            lower = stage.global_batch_tokens // seq_len * seq_len
            error((*at, "global_batch_tokens"), f"{stage.global_batch_tokens} is not a multiple of seq_len {seq_len}: use {lower or seq_len} or {lower + seq_len}")
        return max(1, stage.global_batch_tokens // seq_len)
    if default is not None:
        return default
    error(at, "give global_batch_sequences or global_batch_tokens")
    return 1


def _grad_accum(stage: StageBase, global_batch: int, dp: int, at: tuple, error: Report) -> int:
    per_step = stage.micro_batch_size * dp
    if global_batch % per_step == 0:
        return global_batch // per_step
    lower, upper = global_batch // per_step * per_step, (global_batch // per_step + 1) * per_step
    divisors = [m for m in range(min(stage.micro_batch_size, global_batch), 0, -1) if global_batch % (m * dp) == 0]
    fixes = [f"global_batch_sequences {lower} or {upper}" if lower else f"global_batch_sequences {upper}"]
    if divisors:
        fixes.append(f"micro_batch_size {divisors[0]} (grad_accum {global_batch // (divisors[0] * dp)})")
    error((*at, "global_batch_sequences"),
          f"global batch {global_batch} must be a multiple of micro_batch_size {stage.micro_batch_size} × data-parallel {dp} = {per_step}: use " + " or ".join(fixes))
    return 1


def _memory_advice(model: ModelSpec, stage: StageBase, scale: TrainingScale, device: Device, ac: str) -> str:
    """Alternatives that fit, each with its estimate."""
    par = scale.parallelism
    base = dict(seq_len=scale.seq_len, micro_batch_size=scale.micro_batch_size, **par, activation_checkpointing=ac)
    options: list[tuple[str, dict[str, Any]]] = []
    if ac != "full":
        options.append(("turn on activation_checkpointing: full", {"activation_checkpointing": "full"}))
    if scale.micro_batch_size > 1:
        options.append(("set micro_batch_size to 1", {"micro_batch_size": 1}))
    for factor in (2, 4, 8):
        fsdp = par["fsdp"] * factor
        nodes = scale.nodes * factor if scale.gpus_per_node else scale.nodes
        options.append((f"raise fsdp from {par['fsdp']} to {fsdp} ({nodes} nodes)", {"fsdp": fsdp}))
    fits = []
    for text, change in options:
        est = estimates.training_memory_per_gpu(model, **{**base, **change})
        if est.total <= device.memory_bytes:
            fits.append(f"{text} ({est.total / GIB:.1f} GiB)")
            if len(fits) == 2:
                break
    return " or ".join(fits) if fits else "shorten seq_len or add tensor/pipeline parallelism"


def resolve_scale(
    stage: StageBase,
    model: ModelSpec,
    cluster: LocalCluster | SlurmCluster,
    at: tuple,
    error: Report,
    *,
    seq_len: int | None = None,
    default_global_batch: int | None = None,
    sequences_per_item: int = 1,
    flops_factor: float = 1.0,
) -> TrainingScale:
    """The trainer's scale. `sequences_per_item`: 2 for DPO pairs; `flops_factor` adds reference passes."""
    nodes, per_node, world = _world(stage, cluster, at, error)
    device = device_for(cluster, per_node * nodes, world)
    model = as_run_on(model, device)
    par = _parallelism(stage, model, world, at, error)
    seq_len = seq_len or stage.seq_len or model.max_seq_len
    if seq_len > model.max_seq_len:
        error((*at, "seq_len"), f"{seq_len} exceeds the model's max_seq_len {model.max_seq_len} at this stage: lower it or add a long_context stage before this one")
    if seq_len % par["cp"]:
        error((*at, "parallelism", "cp"), f"cp {par['cp']} must divide seq_len {seq_len}")
    global_batch = _global_batch(stage, seq_len, default_global_batch, at, error)
    dp = par["fsdp"] * par["dp_replicate"]
    grad_accum = _grad_accum(stage, global_batch, dp, at, error)
    tokens_per_step = global_batch * seq_len * sequences_per_item
    if stage.steps is not None:
        steps = stage.steps
    elif stage.tokens is not None:
        steps = math.ceil(stage.tokens / tokens_per_step)
    else:
        error(at, "give steps or tokens")
        steps = max(1, stage.schedule.warmup_steps)  # a placeholder that raises no follow-on warmup error
    if stage.schedule.warmup_steps > steps:
        error((*at, "schedule", "warmup_steps"), f"{stage.schedule.warmup_steps} warmup steps exceed the stage's {steps} steps")
    scale = TrainingScale(
        nodes=nodes, gpus_per_node=per_node, processes=world, device=device, parallelism=par, seq_len=seq_len,
        global_batch_sequences=global_batch, micro_batch_size=stage.micro_batch_size, grad_accum=grad_accum,
        tokens_per_step=tokens_per_step, steps=steps, tokens=steps * tokens_per_step,
        warmup_steps=stage.schedule.warmup_steps,
    )
    ac = stage.activation_checkpointing
    scale.memory = estimates.training_memory_per_gpu(
        model, seq_len=seq_len, micro_batch_size=stage.micro_batch_size * sequences_per_item, **par,
        activation_checkpointing=ac,
    )
    if scale.memory.total > device.memory_bytes:
        what = f"the {device.name} has {device.memory_bytes / GIB:.0f}" if device.kind == "gpu" else f"each of {world} CPU processes has {device.memory_bytes / GIB:.1f}"
        error((*at, "resources"), f"needs {scale.memory.total / GIB:.1f} GiB per {'GPU' if device.kind == 'gpu' else 'process'}, {what}: {_memory_advice(model, stage, scale, device, ac)}")
    scale.flops_per_token = estimates.training_flops_per_token(model, seq_len) * flops_factor
    scale.compute_hours = estimates.train_gpu_hours(scale.flops_per_token, scale.tokens, device.peak_tflops, device.mfu, world)
    return scale


def scale_summary(scale: TrainingScale) -> dict[str, Any]:
    """The resolved numbers as they appear in a job's config."""
    return {
        "device": scale.device.kind,
        "processes": scale.processes,
        "parallelism": scale.parallelism,
        "seq_len": scale.seq_len,
        "global_batch_sequences": scale.global_batch_sequences,
        "micro_batch_size": scale.micro_batch_size,
        "grad_accum": scale.grad_accum,
        "tokens_per_step": scale.tokens_per_step,
        "steps": scale.steps,
        "tokens": scale.tokens,
    }
