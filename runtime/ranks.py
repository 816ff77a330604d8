"""Which task of its job this process is (a Slurm job with several tasks exports RANK from SLURM_PROCID:
runtime/launch/slurm.py), and the rule for jobs that serve vLLM: one vLLM server per job, started by task 0."""
from __future__ import annotations

import os


def task_rank() -> int:
    """This task's rank among its job's tasks; 0 when the job runs one task."""
    return int(os.environ.get("RANK", "0") or 0)


def idle_serving_task(label: str) -> bool:
    """True (after saying so) on a serving job's tasks past the first: the job's vLLM server and its data-parallel
    engines run on the first node; engines on further nodes are not launched yet (the compiler warns)."""
    rank = task_rank()
    if rank == 0:
        return False
    print(f"{label}: task {rank}: vLLM runs on the job's first node only (engines on further nodes are not launched "
          f"yet); nothing to do here", flush=True)
    return True
