"""The Slurm executor: submits a launch's jobs through submitit's AutoExecutor, all at once, ordered by Slurm.

- Resources come from the plan (what was reviewed is what runs): nodes, GPUs per node (`--gpus-per-node`), CPUs
  per task, memory per node, time limit, partition, account, qos, and the cluster's setup lines before the task.
  A job with `processes` > 1 runs one Slurm task per process (`tasks_per_node` = processes / nodes); the task
  exports torch.distributed's variables from Slurm's (`submitit.helpers.TorchDistributedEnvironment`).
- Order: every job is submitted at once with `--dependency=afterok:<parents' Slurm ids>` (cached parents need
  none); a failed job makes Slurm cancel its dependents (the cluster runs with
  `DependencyParameters=kill_invalid_depend`; scripts/slurm-local sets it).
- Arrays: a swarm is one job array (`submitit`'s batch), at most `array.parallelism` tasks at a time, each task
  with RECIPE_ARRAY_INDEX / RECIPE_ARRAY_SIZE.
- RL groups (trainer + rollout sidecar): every member is submitted with the group's dependencies, so they
  become eligible in the same scheduling pass and start together when the resources are there; each finds the
  others' output folders in `RECIPE_PEER_<JOB>` (a sidecar writes its address there) and waits for them.
  (An `after:<first member>` dependency was tried: Slurm only re-evaluates it at its next scheduling cycle, up to
  a minute later. A heterogeneous job would allocate both at once, but submitit cannot submit one.)
- Faults: the task is `submitit.helpers.Checkpointable`: on a time limit or preemption submitit requeues it and it
  resumes from its last checkpoint (the trainers resume from their latest DCP checkpoint by themselves).
- Watching: after submitting, the launcher follows the jobs (submitit's sacct watcher) and keeps
  runs/<recipe>/state.json current (Slurm ids, state, reason), until every job ended. Ctrl-C stops watching
  only: the jobs stay queued on the cluster.

Used by `recipe launch --executor slurm` (runtime/launch/__init__.py). Tested against a real single-node cluster
(scripts/slurm-local; tests/slurm/test_slurm_launch.py).
"""
from __future__ import annotations

import time
from typing import Any, Callable

from runtime.launch.local import _failure_reason, _repo_on_pythonpath
from runtime.launch.prepare import LaunchPlan, ensure_done, git_provenance, job_env, write_job_folder
from runtime.launch.state import RunState
from runtime.plan import PlannedJob

POLL_S = 5.0  # one sacct call per poll
# Slurm's job states -> ours. PREEMPTED and REQUEUED are on their way back to the queue (our tasks are
# requeued on preemption), as submitit counts them; a state not listed (UNKNOWN: sacct has not seen it yet) is
# pending.
SLURM_TO_STATE = {"PENDING": "pending", "REQUEUED": "pending", "PREEMPTED": "pending", "RUNNING": "running",
                  "COMPLETING": "running", "COMPLETED": "done", "CANCELLED": "cancelled", "FAILED": "failed",
                  "TIMEOUT": "failed", "OUT_OF_MEMORY": "failed", "NODE_FAIL": "failed", "BOOT_FAIL": "failed",
                  "DEADLINE": "failed"}
SEVERITY = ("done", "pending", "running", "cancelled", "failed")  # a job with several tasks is its worst task


def our_state(slurm_state: str) -> str:
    """Our state for a Slurm state as sacct prints it ("CANCELLED by 0" -> cancelled)."""
    return SLURM_TO_STATE.get(slurm_state.split(" ")[0], "pending")


def worst(states: list[str]) -> str:
    """The state of a job whose tasks are in `states` (ours): done only when every task is."""
    return max(states, key=SEVERITY.index)


def time_limit_minutes(value: str | None) -> int | None:
    """'[D-]HH:MM:SS' (or MM, HH:MM) -> minutes, rounded up; None when unset."""
    if not value:
        return None
    days, _, clock = value.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    hours, minutes, seconds = parts[-3:]
    return (int(days or 0) * 24 + hours) * 60 + minutes + (1 if seconds else 0)


def slurm_parameters(job: PlannedJob, setup: list[str]) -> dict[str, Any]:
    """submitit AutoExecutor parameters for one planned job."""
    res = job.resources
    nodes = int(res.get("nodes") or 1)
    processes = int(res.get("processes") or 1)
    tasks_per_node = max(1, processes // nodes)
    cpus = int(res.get("cpus_per_node") or 1)
    params: dict[str, Any] = {
        "name": f"{job.id}",
        "nodes": nodes,
        "tasks_per_node": tasks_per_node,
        "cpus_per_task": max(1, cpus // tasks_per_node),
        "timeout_min": time_limit_minutes(res.get("time_limit")) or 60,
        "slurm_setup": list(setup),
    }
    # USR2 this long before the limit: submitit checkpoints (requeues) the task; a quarter of short limits
    params["slurm_signal_delay_s"] = min(90, max(15, params["timeout_min"] * 60 // 4))
    if res.get("memory_gib_per_node"):
        params["mem_gb"] = int(res["memory_gib_per_node"])
    if int(res.get("gpus_per_node") or 0) > 0:
        params["gpus_per_node"] = int(res["gpus_per_node"])
    for key in ("partition", "account", "qos"):
        if res.get(key):
            params[f"slurm_{key}"] = res[key]
    if job.array:
        params["slurm_array_parallelism"] = int(job.array.get("parallelism") or job.array["size"])
    return params


def submission_text(launch: LaunchPlan) -> str:
    """What `--executor slurm` would submit: one line per sbatch call, and the count (arrays, not one call per
    task)."""
    lines, tasks = [], 0
    for job in launch.plan.jobs:
        if launch.decisions[job.id].action != "run":
            continue
        params = slurm_parameters(job, [])
        size = int((job.array or {}).get("size", 1))
        tasks += size
        parents = [p for p in job.depends_on if launch.decisions[p].action == "run"]
        what = [f"array of {size} (at most {params['slurm_array_parallelism']} at once)"] if job.array else []
        what += [f"{params['nodes']} node(s) x {params.get('gpus_per_node', 0)} GPU(s), "
                 f"{params['tasks_per_node']} task(s)/node, {params['cpus_per_task']} CPU(s)/task",
                 f"{params.get('mem_gb', '?')} GB/node", f"{params['timeout_min']} min"]
        what += [f"{key.removeprefix('slurm_')} {params[key]}" for key in ("slurm_partition", "slurm_account", "slurm_qos")
                 if key in params]
        what.append(f"afterok {','.join(parents)}" if parents else "no dependency")
        lines.append(f"sbatch  {job.id}: " + ", ".join(what))
    lines.append(f"slurm: {len(lines)} sbatch call(s) for {tasks} task(s)")
    return "\n".join(lines)


def _master_id(job_id: str) -> str:
    """An array task's id '123_4' -> '123' (afterok on the master waits for every task)."""
    return job_id.split("_")[0]


class SlurmTask:
    """What each Slurm task runs: `run_task`, requeued by submitit on a time limit or preemption."""

    def __init__(self, config_path: str, entry: str, env: dict[str, str]) -> None:
        self.config_path, self.entry, self.env = config_path, entry, env

    def __call__(self) -> Any:
        import os

        from runtime.launch.task import run_task

        if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
            from submitit.helpers import TorchDistributedEnvironment

            TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        return run_task(self.config_path, self.entry, self.env)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Requeue as is: the job resumes from its own latest checkpoint."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(SlurmTask(self.config_path, self.entry, self.env))


class SlurmLauncher:
    """Submit every job a LaunchPlan marks "run", then follow them to the end; report every change to `state`."""

    name = "slurm"

    def __init__(self, launch: LaunchPlan, state: RunState, on_change: Callable[[], None] = lambda: None,
                 *, poll_s: float = POLL_S) -> None:
        self.launch, self.state, self.on_change, self.poll_s = launch, state, on_change, poll_s
        self.provenance = git_provenance()
        self.submitted: dict[str, list[Any]] = {}  # job id -> submitit jobs (one per array task)
        self.setup = list(launch.plan.cluster.get("setup") or [])

    def _set(self, job_id: str, state: str, reason: str | None = None, **extra: Any) -> None:
        self.state.set(job_id, state, reason, **extra)
        self.on_change()

    def _dependency(self, job: PlannedJob) -> str | None:
        ids = sorted({_master_id(str(sub.job_id)) for p in job.depends_on for sub in self.submitted.get(p, [])})
        return f"afterok:{':'.join(ids)}" if ids else None

    def submit(self, job: PlannedJob) -> list[Any]:
        import submitit

        config_path = write_job_folder(self.launch, job, executor=self.name, provenance=self.provenance,
                                       stamp="submitted")
        out = config_path.parent
        executor = submitit.AutoExecutor(folder=out / "logs", cluster="slurm")
        params = slurm_parameters(job, self.setup)
        dependency = self._dependency(job)
        if dependency:
            params["slurm_dependency"] = dependency
        executor.update_parameters(**params)
        env = job_env(self.launch, job)
        size = int((job.array or {}).get("size", 1))
        with _repo_on_pythonpath():
            if job.array:
                with executor.batch():
                    subs = [executor.submit(SlurmTask(str(config_path), job.entry,
                                                      {**env, "RECIPE_TASK_INDEX": str(i), "RECIPE_ARRAY_INDEX": str(i),
                                                       "RECIPE_ARRAY_SIZE": str(size)}))
                            for i in range(size)]
            else:
                subs = [executor.submit(SlurmTask(str(config_path), job.entry, {**env, "RECIPE_TASK_INDEX": "0"}))]
        self.submitted[job.id] = subs
        ids = ",".join(str(s.job_id) for s in subs) if len(subs) <= 4 else f"{_master_id(str(subs[0].job_id))}_[0-{size - 1}]"
        why = self.launch.decisions[job.id].why
        self._set(job.id, "pending", f"queued ({dependency or 'no dependency'}); {why}", executor_id=ids)
        return subs

    def _refresh(self) -> None:
        """One sacct call for every submitted job. submitit's own watcher re-polls a job at most every 10 minutes
        once it is old (its delay grows to `delay_s=600`): too slow to follow a pipeline."""
        first = next(iter(self.submitted.values()), None)
        if first:
            first[0].watcher.update()

    def _poll(self, job_id: str) -> None:
        """Move one job's state forward from its tasks' Slurm states (as of the last `_refresh`)."""
        slurm_states = [str(s.watcher.get_state(s.job_id, mode="cache")).split(" ")[0] for s in self.submitted[job_id]]
        tasks = [our_state(s) for s in slurm_states]
        job_state = worst(tasks)
        if job_state == "done":
            ensure_done(self.launch, self.launch.plan.job(job_id))
            self._set(job_id, "done", "finished")
        elif job_state == "cancelled":
            parent = self._parent_failed(job_id)
            self._set(job_id, "cancelled", f"parent {parent} did not finish" if parent
                      else "cancelled on the cluster (scancel or recipe cancel)")
        elif job_state == "failed":
            index = tasks.index("failed")
            self._set(job_id, "failed", self._reason(job_id, index, slurm_states[index]))
        elif job_state == "running" and self.state.jobs[job_id].state == "pending":
            self._set(job_id, "running", "running")

    def _parent_failed(self, job_id: str) -> str | None:
        job = self.launch.plan.job(job_id)
        return next((p for p in job.depends_on if self.state.jobs[p].state in ("failed", "cancelled")), None)

    def _reason(self, job_id: str, index: int, slurm_state: str) -> str:
        sub = self.submitted[job_id][index]
        where = f"task {index}: " if len(self.submitted[job_id]) > 1 else ""
        detail = ""
        if slurm_state == "FAILED":
            try:
                exc = sub.exception()
            except Exception as error:  # noqa: BLE001 - died without a result file
                exc = error
            detail = f": {_failure_reason(exc)}" if exc is not None else ""
        return f"{where}Slurm {slurm_state}{detail}"

    def run(self) -> bool:
        """Submit everything, then watch until every submitted job ended; True when all finished."""
        for job in self.launch.plan.jobs:  # plan order: parents are submitted before their children
            if self.launch.decisions[job.id].action == "run":
                self.submit(job)
        try:
            while any(self.state.jobs[j].state in ("pending", "running") for j in self.submitted):
                self._refresh()
                for job_id in self.submitted:
                    if self.state.jobs[job_id].state in ("pending", "running"):
                        self._poll(job_id)
                self.on_change()
                time.sleep(self.poll_s)
        except KeyboardInterrupt:
            print(f"stopped watching: the jobs stay queued on the cluster; `recipe status {self.state.path.parent}` "
                  f"follows them, `recipe cancel {self.state.path.parent}` stops them")
            raise
        return all(j.state in ("done", "cached", "skipped") for j in self.state.jobs.values())
