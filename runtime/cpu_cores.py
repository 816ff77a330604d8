"""CPU cores as devices: on a machine without GPUs, the members of an RL group (trainer, rollout sidecar) run on
disjoint sets of cores, as they would run on separate GPUs on a cluster. Sharing cores, each process's threads
preempt the other's and asynchronous RL overlaps nothing: generation and training only take turns.

    RECIPE_CPU_CORES=0-3,8   # the cores a job may use (the launcher sets it; `pin_from_env` applies it)

The local launcher splits the cores it may use among the members of a CPU-only RL group (`group_core_sets`); the job's
process pins itself before torch starts its thread pool (`pin_from_env`, called first thing in a task), so every
thread it starts (torch's OpenMP pool, the vLLM server it spawns) inherits the set. On Slurm the allocation decides
and nothing is set.

Standard library only (the launcher imports it).
"""
from __future__ import annotations

import os
from typing import Sequence

ENV = "RECIPE_CPU_CORES"


def parse_cores(text: str) -> list[int]:
    """'0-3,8' -> [0, 1, 2, 3, 8] (sorted, no repeats); ValueError on anything else."""
    cores: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        first, dash, last = part.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError(f"{ENV}={text!r}: expected core ids like 0-3,8")
        low, high = int(first), int(last) if dash else int(first)
        if high < low:
            raise ValueError(f"{ENV}={text!r}: range {part} runs backwards")
        cores.update(range(low, high + 1))
    return sorted(cores)


def format_cores(cores: Sequence[int]) -> str:
    """[0, 1, 2, 3, 8] -> '0-3,8'."""
    runs: list[list[int]] = []
    for core in sorted(set(cores)):
        if runs and core == runs[-1][1] + 1:
            runs[-1][1] = core
        else:
            runs.append([core, core])
    return ",".join(str(low) if low == high else f"{low}-{high}" for low, high in runs)


def split_cores(cores: Sequence[int], parts: int) -> list[list[int]] | None:
    """`cores` in `parts` contiguous, near-equal shares (the first ones get the remainder); None when there are
    fewer cores than parts (nothing to split: the members share)."""
    ordered = sorted(set(cores))
    if parts < 1 or len(ordered) < parts:
        return None
    size, extra = divmod(len(ordered), parts)
    shares, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        shares.append(ordered[start:end])
        start = end
    return shares


def available_cores() -> list[int]:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def assigned_cores() -> list[int] | None:
    """The cores RECIPE_CPU_CORES gives this job, or None when it sets none."""
    text = os.environ.get(ENV, "").strip()
    return parse_cores(text) if text else None


def pin_from_env() -> list[int] | None:
    """Pin this process to RECIPE_CPU_CORES (and size OpenMP's pool to it, unless OMP_NUM_THREADS says otherwise)
    before any thread pool starts; the cores, or None when unset or when the platform cannot pin."""
    cores = assigned_cores()
    if cores is None or not hasattr(os, "sched_setaffinity"):
        return None
    allowed = available_cores()
    usable = [c for c in cores if c in allowed] or allowed
    os.sched_setaffinity(0, usable)
    os.environ.setdefault("OMP_NUM_THREADS", str(len(usable)))
    return usable
