"""submitit against the real single-node Slurm cluster of scripts/slurm-local: results, dependencies, arrays,
failures, and an idempotent `start`.

Run: python -m pytest tests/slurm -q   (see tests/slurm/conftest.py; RECIPE_SLURM_TESTS=0 skips)
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

import cloudpickle
import pytest
import submitit
from submitit.core.utils import FailedJobError, UncompletedJobError

pytestmark = pytest.mark.slurm

# The jobs' Python cannot import this test module: ship its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

JOB_TIMEOUT_S = 45
# Slurm's states for a job that will not run any more (sacct may add a suffix: "CANCELLED by 0").
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
         "DEADLINE"}


def executor(folder: Path) -> submitit.SlurmExecutor:
    ex = submitit.SlurmExecutor(folder=folder / "%j", python=sys.executable)
    ex.update_parameters(partition="debug", time=5, cpus_per_task=1, signal_delay_s=30)
    return ex


def wait_ended(job: submitit.Job, timeout: float = JOB_TIMEOUT_S) -> str:
    """Wait until sacct reports the job ended; its state. Fails the test instead of hanging."""
    deadline = time.monotonic() + timeout
    while True:
        state = job.get_info(mode="force").get("State", "UNKNOWN")
        if state.split()[0] in ENDED:
            return state
        if time.monotonic() > deadline:
            job.cancel(check=False)
            pytest.fail(f"job {job.job_id} still {state} after {timeout}s")
        time.sleep(0.5)


def square(x: int) -> int:
    return x * x


def write_after_a_while(path: str) -> str:
    time.sleep(2)
    Path(path).write_text("parent was here")
    return "parent"


def read_parent_file(path: str) -> str:
    return Path(path).read_text()  # raises if the parent has not run yet


def fail() -> None:
    raise ValueError("this job fails on purpose")


def test_single_job_returns_its_result(slurm_cluster: dict[str, str], tmp_path: Path) -> None:
    job = executor(tmp_path).submit(square, 7)
    assert wait_ended(job) == "COMPLETED"
    assert job.result() == 49


def test_afterok_child_runs_after_its_parent(slurm_cluster: dict[str, str], tmp_path: Path) -> None:
    marker = str(tmp_path / "parent.txt")
    ex = executor(tmp_path)
    parent = ex.submit(write_after_a_while, marker)
    ex.update_parameters(dependency=f"afterok:{parent.job_id}")
    child = ex.submit(read_parent_file, marker)
    assert wait_ended(child) == "COMPLETED"
    assert parent.result() == "parent"
    assert child.result() == "parent was here"


def test_array_returns_every_result(slurm_cluster: dict[str, str], tmp_path: Path) -> None:
    jobs = executor(tmp_path).map_array(square, [1, 2, 3, 4])
    assert len(jobs) == 4
    assert [wait_ended(job) for job in jobs] == ["COMPLETED"] * 4
    assert [job.result() for job in jobs] == [1, 4, 9, 16]


def test_failed_job_raises_and_its_dependent_is_cancelled(slurm_cluster: dict[str, str], tmp_path: Path) -> None:
    ex = executor(tmp_path)
    parent = ex.submit(fail)
    ex.update_parameters(dependency=f"afterok:{parent.job_id}")
    child = ex.submit(square, 3)
    assert wait_ended(parent) == "FAILED"
    with pytest.raises(FailedJobError, match="this job fails on purpose"):
        parent.result()
    # DependencyParameters=kill_invalid_depend: cancelled, not pending forever.
    assert wait_ended(child).startswith("CANCELLED")
    child._results_timeout_s = 1  # submitit waits 15 s for a result file that a cancelled job never writes
    with pytest.raises(UncompletedJobError):
        child.result()


def test_start_twice_is_idempotent(slurm_cluster: dict[str, str], run_slurm_local: Callable[..., str]) -> None:
    out = run_slurm_local("start", timeout=60)
    assert "already running" in out
    assert f"export SLURM_CONF={slurm_cluster['SLURM_CONF']}" in out.splitlines()
    assert "slurmctld  running" in run_slurm_local("status", timeout=30)
