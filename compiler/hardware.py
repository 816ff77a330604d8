"""What one job gets from the cluster: devices, their speed and memory, and the resolved resources."""
from __future__ import annotations

import math
from dataclasses import dataclass

from spec.cluster import LocalCluster, SlurmCluster
from spec.model import ModelSpec

GIB = 1024**3
LOCAL_TIME_LIMIT_HOURS = 24  # the local executor's limit when a job's time cannot be estimated


@dataclass(frozen=True)
class Device:
    """The device a job's processes run on."""

    kind: str  # "gpu" or "cpu"
    name: str
    memory_bytes: int  # per process (per GPU, or the host's share per CPU process)
    peak_tflops: float  # per process
    bandwidth_gbps: float
    mfu: float


def device_for(cluster: LocalCluster | SlurmCluster, gpus: int, processes: int) -> Device:
    """The device of a job with `gpus` GPUs (0: CPU with `processes` processes).

    A job asking for GPUs the cluster lacks (see `gpu_count_problem`) is reported by its builder; meanwhile it is
    estimated on what the cluster has: a Slurm job on one of its GPUs, a job on a CPU-only machine on the CPU."""
    gpu = cluster.gpu
    if gpu is not None and (gpus > 0 or isinstance(cluster, SlurmCluster)):
        return Device("gpu", gpu.type, int(gpu.memory_gib * GIB), gpu.peak_tflops, gpu.memory_bandwidth_gbps, cluster.mfu)
    assert isinstance(cluster, LocalCluster), "a Slurm cluster always has a GPU type"
    return Device(
        "cpu",
        "cpu",
        int(cluster.memory_gib * GIB / processes),
        cluster.cpu_tflops / processes,
        cluster.cpu_memory_bandwidth_gbps,
        cluster.mfu,
    )


def as_run_on(model: ModelSpec, device: Device) -> ModelSpec:
    """The model as it runs on `device`: CPU jobs compute in float32 whatever the recipe's dtype."""
    return model if device.kind == "gpu" else model.model_copy(update={"dtype": "float32"})


def gpu_count_problem(cluster: LocalCluster | SlurmCluster, gpus: int) -> str | None:
    """Why a job asking for `gpus` GPUs cannot run on `cluster`, or None when it can."""
    if isinstance(cluster, SlurmCluster):
        return f"{cluster.name} runs jobs on GPUs: give at least 1 (got 0)" if gpus == 0 else None
    if gpus > cluster.gpus:
        return f"this machine has {cluster.gpus} GPUs (got {gpus})"
    return None


def gpus_per_node(cluster: LocalCluster | SlurmCluster) -> int:
    return cluster.gpus_per_node if isinstance(cluster, SlurmCluster) else cluster.gpus


def nodes_for(cluster: LocalCluster | SlurmCluster, gpus: int) -> int:
    per_node = gpus_per_node(cluster)
    return max(1, math.ceil(gpus / per_node)) if per_node else 1


def parse_time(limit: str) -> float:
    """'[D-]HH:MM:SS' -> hours."""
    days, _, clock = limit.rpartition("-")
    h, m, s = (int(x) for x in clock.split(":"))
    return int(days or 0) * 24 + h + m / 60 + s / 3600


def format_time(hours: float) -> str:
    """Hours -> '[D-]HH:MM:SS' (rounded up to the minute)."""
    minutes = max(1, math.ceil(hours * 60))
    days, minutes = divmod(minutes, 24 * 60)
    text = f"{minutes // 60:02d}:{minutes % 60:02d}:00"
    return f"{days}-{text}" if days else text


def time_limit_for(cluster: LocalCluster | SlurmCluster, wall_hours: float | None, requested: str | None) -> str:
    """The requested limit, else the estimate plus 25% (at least 10 minutes) within the cluster's limit."""
    if requested is not None:
        return requested
    cap = parse_time(cluster.time_limit) if isinstance(cluster, SlurmCluster) else LOCAL_TIME_LIMIT_HOURS
    if wall_hours is None:
        return format_time(cap)
    return format_time(min(cap, max(wall_hours * 1.25, 1 / 6)))
