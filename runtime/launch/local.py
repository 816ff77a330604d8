"""The local executor: runs a launch's jobs on this machine through submitit's LocalExecutor.

Each job is one submitit job (its own controller process; the task calls os.setpgrp, so a job and the
processes it starts form one process group); an array job runs its tasks, at most
`array.parallelism` at a time, with RECIPE_ARRAY_INDEX / RECIPE_ARRAY_SIZE set; the jobs of an RL group
(same `group`) are submitted together once all their parents are done. A failed job stops the rest of
its group and cancels its descendants. Used by `recipe launch --executor local` (runtime/launch/__init__.py).
"""
from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from runtime.cpu_cores import available_cores
from runtime.launch.interrupt import cause
from runtime.launch.prepare import (REPO, LaunchPlan, ensure_done, git_provenance, group_cpu_env, job_env,
                                   write_job_folder)
from runtime.launch.state import RunState
from runtime.plan import PlannedJob

CANCELLED_MARKER = ".cancelled"  # written by `recipe cancel` before it stops the job's processes
LOCAL_TIMEOUT_MIN = 7 * 24 * 60  # the plan's time limits are Slurm's; locally a job may take as long as it needs
POLL_S = 0.05


@contextlib.contextmanager
def _repo_on_pythonpath() -> Iterator[None]:
    """Submitit copies os.environ into the job: make sure the job can import `runtime`."""
    old = os.environ.get("PYTHONPATH")
    parts = [p for p in (old or "").split(os.pathsep) if p]
    if str(REPO) not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *parts])
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def _failure_reason(exc: BaseException) -> str:
    """One line: the last non-empty line of a submitit failure (the job's own exception)."""
    text = str(exc)
    parts = text.split("-" * 22)  # submitit: "... with trace:\n-----\n<traceback>\n-----\nYou can check full logs ..."
    body = parts[1] if len(parts) >= 3 else text
    lines = [line.strip() for line in body.splitlines() if line.strip()]
    return lines[-1] if lines else exc.__class__.__name__


class _Running:
    """One started job: its pending array indices and the submitit jobs in flight."""

    def __init__(self, job: PlannedJob, executor: Any, env: dict[str, str], config_path: Path) -> None:
        self.job, self.executor, self.env, self.config_path = job, executor, env, config_path
        size = (job.array or {}).get("size", 1)
        self.size = size
        self.todo = list(range(size))
        self.parallel = max(1, (job.array or {}).get("parallelism", size) or size)
        self.active: list[tuple[int, Any]] = []
        self.ids: list[str] = []

    def submit_more(self) -> None:
        from runtime.launch.task import run_task

        while self.todo and len(self.active) < self.parallel:
            index = self.todo.pop(0)
            env = {**self.env, "RECIPE_TASK_INDEX": str(index)}
            if self.job.array:
                env.update(RECIPE_ARRAY_INDEX=str(index), RECIPE_ARRAY_SIZE=str(self.size))
            with _repo_on_pythonpath():
                sub = self.executor.submit(run_task, str(self.config_path), self.job.entry, env)
            self.active.append((index, sub))
            self.ids.append(str(sub.job_id))

    def poll(self) -> str | None:
        """None while running; "" when every task succeeded; the failure reason otherwise."""
        for index, sub in list(self.active):
            if not sub.done():
                continue
            self.active.remove((index, sub))
            try:
                exc = sub.exception()
            except Exception as error:  # noqa: BLE001 - a task that died without a result
                exc = error
            if exc is not None:
                where = f"task {index}: " if self.job.array else ""
                return where + _failure_reason(exc)
        self.submit_more()
        return None if self.active or self.todo else ""

    def kill(self) -> None:
        """Stop every task in flight: the task's process group, then submitit's controller. SIGKILL both: the task
        ignores SIGTERM (submitit's preemption handling) and the controller, which shares our terminal, would
        print a KeyboardInterrupt traceback on submitit's own cancel (SIGINT)."""
        out = Path(self.env["RECIPE_OUTPUT_DIR"])
        for index, sub in self.active:
            controller = getattr(sub, "_process", None)  # submitit's LocalJob keeps its Popen here
            if controller is not None:  # stopped, it starts no task while we look for the one it started
                with contextlib.suppress(OSError):
                    os.kill(controller.pid, signal.SIGSTOP)
            pgid_file = out / f".pgid.{index}"
            with contextlib.suppress(OSError, ValueError):
                os.killpg(int(pgid_file.read_text()), signal.SIGKILL)
            # A task that has not yet written its .pgid file (Ctrl-C just after the start) is still the
            # controller's child: without this it would run on, orphaned, holding the launcher's output pipes.
            for child in children_of(controller.pid) if controller is not None else []:
                with contextlib.suppress(OSError):
                    os.killpg(child, signal.SIGKILL) if os.getpgid(child) == child else os.kill(child, signal.SIGKILL)
            with contextlib.suppress(Exception):
                controller.kill() if controller is not None else sub.cancel(check=False)
        self.active, self.todo = [], []


def children_of(pid: int) -> list[int]:
    """The live child processes of `pid` (Linux /proc; empty elsewhere or once `pid` is gone)."""
    found: list[int] = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError, ValueError):
            found += [int(c) for c in children.read_text().split()]
    return found


class LocalLauncher:
    """Run the jobs a LaunchPlan marks "run", in dependency order; report every change to `state`."""

    name = "local"

    def __init__(self, launch: LaunchPlan, state: RunState, on_change: Callable[[], None] = lambda: None) -> None:
        self.launch, self.state, self.on_change = launch, state, on_change
        self.running: dict[str, _Running] = {}
        self.provenance = git_provenance()

    def _set(self, job_id: str, state: str, reason: str | None = None, **extra: Any) -> None:
        self.state.set(job_id, state, reason, **extra)
        self.on_change()

    def _units(self) -> list[list[PlannedJob]]:
        units: dict[str, list[PlannedJob]] = {}
        for job in self.launch.to_run():
            units.setdefault(f"group:{job.group}" if job.group else job.id, []).append(job)
        return list(units.values())

    def _start(self, job: PlannedJob) -> None:
        import submitit

        config_path = write_job_folder(self.launch, job, executor=self.name, provenance=self.provenance,
                                       stamp="started")
        out = config_path.parent
        for stale in [*out.glob(".pgid.*"), out / CANCELLED_MARKER]:
            stale.unlink(missing_ok=True)
        executor = submitit.LocalExecutor(folder=out / "logs")
        executor.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN, tasks_per_node=1)
        env = {**job_env(self.launch, job), **group_cpu_env(self.launch.plan, job, available_cores())}
        running = _Running(job, executor, env, config_path)
        running.submit_more()
        self.running[job.id] = running
        self._set(job.id, "running", self.launch.decisions[job.id].why, executor_id=",".join(running.ids))

    def _cancel_descendants(self, job_id: str) -> None:
        for job in self.launch.plan.jobs:
            if job_id in job.depends_on and self.state.jobs[job.id].state == "pending":
                self._set(job.id, "cancelled", f"parent {job_id} {self.state.jobs[job_id].state}")
                self._cancel_descendants(job.id)

    def _finish(self, job: PlannedJob, failure: str) -> None:
        del self.running[job.id]
        if failure and (self.launch.output_dir(job.id) / CANCELLED_MARKER).exists():
            self._set(job.id, "cancelled", "recipe cancel")
            self._cancel_descendants(job.id)
            return
        if failure:
            self._set(job.id, "failed", failure)
            for sibling_id, sibling in list(self.running.items()):
                if job.group and sibling.job.group == job.group:
                    sibling.kill()
                    del self.running[sibling_id]
                    self._set(sibling_id, "cancelled", f"group member {job.id} failed")
                    self._cancel_descendants(sibling_id)
            self._cancel_descendants(job.id)
            return
        ensure_done(self.launch, job)
        self._set(job.id, "done", "finished")

    def _start_ready(self, units: list[list[PlannedJob]]) -> int:
        """Start every pending unit whose parents are all done or cached; return how many jobs started."""
        started = 0
        for unit in units:
            if any(self.state.jobs[j.id].state != "pending" for j in unit):
                continue
            if any((self.launch.output_dir(j.id) / CANCELLED_MARKER).exists() for j in unit):
                for job in unit:
                    self._set(job.id, "cancelled", "recipe cancel")
                    self._cancel_descendants(job.id)
                continue
            members = {j.id for j in unit}
            parents = {p for j in unit for p in j.depends_on if p not in members}
            if all(self.state.jobs[p].state in ("done", "cached") for p in parents):
                for job in unit:
                    self._start(job)
                    started += 1
        return started

    def run(self) -> bool:
        """Run everything; True when no job failed or was cancelled. Ctrl-C, SIGTERM or SIGHUP (under the CLI's
        stop_on_signals) stops the jobs in flight."""
        units = self._units()
        for job in self.launch.to_run():  # a cancel of an earlier launch does not stop this one
            (self.launch.output_dir(job.id) / CANCELLED_MARKER).unlink(missing_ok=True)
        try:
            while True:
                self._start_ready(units)
                for job_id, running in list(self.running.items()):
                    if job_id not in self.running:  # stopped with its group
                        continue
                    failure = running.poll()
                    if failure is not None:
                        self._finish(running.job, failure)
                if not self.running and not self._start_ready(units):
                    break
                self.on_change()
                time.sleep(POLL_S)
        except KeyboardInterrupt as exc:
            for job_id, running in list(self.running.items()):
                running.kill()
                self._set(job_id, "failed", f"interrupted ({cause(exc)})")
            self.running.clear()
            for job_id, job_state in self.state.jobs.items():
                if job_state.state == "pending":
                    self._set(job_id, "cancelled", "launch interrupted")
            raise
        # Anything still pending could never start (its parents did not finish).
        for job_id, job_state in self.state.jobs.items():
            if job_state.state == "pending":
                self._set(job_id, "cancelled", "a parent did not finish")
        return all(j.state in ("done", "cached", "skipped") for j in self.state.jobs.values())
