"""Which task of its job this process is (a Slurm job with several tasks exports RANK from SLURM_PROCID:
runtime/launch/slurm.py), and what a serving job's tasks past the first do: one vLLM API server per job, started
by task 0; every other task runs its node's share of the data-parallel engines (runtime/rollout/engines.py)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from runtime.rollout.server import ServerSettings


def task_rank() -> int:
    """This task's rank among its job's tasks; 0 when the job runs one task."""
    return int(os.environ.get("RANK", "0") or 0)


def run_engine_task(label: str, out: Path, settings: ServerSettings, python: Callable[[], Path], rank: int) -> None:
    """A serving job's task `rank` > 0: this node's headless engines until task 0 is done, or nothing (in one line)
    when the job's engines all run on the first node."""
    nodes = settings.data_parallel // settings.data_parallel_local if settings.spans_nodes else 1
    if rank >= nodes:
        print(f"{label}: task {rank}: the job's {settings.data_parallel} vLLM engine(s) run on {nodes} node(s); "
              "nothing to do here", flush=True)
        return
    from runtime.rollout.engines import run_engine_worker

    served = run_engine_worker(out, python(), settings, rank, log=lambda line: print(f"{label}: {line}", flush=True))
    print(f"{label}: task {rank}: done after {served} start(s) of this node's engines", flush=True)
