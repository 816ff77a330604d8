"""Where a launched run stands, its logs, and stopping it: `recipe status`, `recipe logs`, `recipe cancel`.

    recipe status RUN [--watch [SECONDS]]     RUN: runs/<name> (a folder with state.json) or a recipe name
    recipe logs RUN JOB [--task N] [-f]
    recipe cancel RUN [JOB ...]

- status: one row per job: state, executor id (Slurm ids), elapsed, last step / total steps, loss, tokens/s and an
  ETA from the job's own pace; a failed job adds its exit reason and the last lines of its log. For a Slurm run the
  states of unfinished jobs come from `sacct` (what the cluster says now, even when no launcher is watching).
- logs: the job's log files (submitit's `logs/<id>_<task>_log.out` / `.err`), or follows them with `-f`.
- cancel: Slurm jobs through `scancel` (Slurm then cancels their dependents); local jobs by signalling their
  process groups. The run's state.json records them as cancelled.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import TextIO

from runtime.launch.progress import elapsed_text, last_metrics
from runtime.launch.slurm import our_state, worst
from runtime.launch.state import JobState, RunState

UNFINISHED = ("pending", "running")
LOG_TAIL_LINES = 5


class StatusError(Exception):
    """A user-facing problem (no such run or job): one line."""


def find_run(arg: str, runs: str | Path = "runs") -> Path:
    """The run folder: ARG itself when it holds state.json, else RUNS/ARG."""
    for candidate in (Path(arg), Path(runs) / arg):
        if (candidate / "state.json").is_file():
            return candidate
    raise StatusError(f"{arg}: no run here (looked for {Path(arg) / 'state.json'} and {Path(runs) / arg / 'state.json'})")


def load_state(run_dir: Path) -> RunState:
    data = json.loads((run_dir / "state.json").read_text(encoding="utf-8"))
    names = {f.name for f in fields(JobState)}
    jobs = {job_id: JobState(**{k: v for k, v in job.items() if k in names}) for job_id, job in data["jobs"].items()}
    return RunState(path=run_dir / "state.json", recipe=data["recipe"], plan=data["plan"], executor=data["executor"],
                    jobs=jobs, started=data.get("started", time.time()))


def slurm_ids(job: JobState) -> list[str]:
    """The Slurm ids of a job as state.json records them ("12,13" or "12_[0-511]")."""
    if not job.executor_id:
        return []
    return [part.split("_[")[0] for part in job.executor_id.split(",") if part]


def sacct_states(ids: list[str]) -> dict[str, str]:
    """Slurm id -> our state, for the given ids (array tasks folded into their job: the worst state wins)."""
    if not ids:
        return {}
    try:
        out = subprocess.run(["sacct", "-n", "-P", "-X", "--format=JobID,State", "-j", ",".join(ids)],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    tasks: dict[str, list[str]] = {}
    for line in out.splitlines():
        job_id, _, raw = line.partition("|")
        tasks.setdefault(job_id.split("_")[0], []).append(our_state(raw))
    return {key: worst(states) for key, states in tasks.items()}


def refresh_from_slurm(state: RunState) -> None:
    """Unfinished jobs of a Slurm run take the state sacct reports (display only; state.json is not rewritten)."""
    if state.executor != "slurm":
        return
    unfinished = [job for job in state.jobs.values() if job.state in UNFINISHED]
    live = sacct_states([i for job in unfinished for i in slurm_ids(job)])
    for job in unfinished:
        seen = [live[i] for i in slurm_ids(job) if i in live]
        if seen:
            job.state = worst(seen)


def total_steps(output_dir: str) -> int | None:
    try:
        config = json.loads((Path(output_dir) / "config.json").read_text(encoding="utf-8"))
        return int(config["config"]["scale"]["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def log_files(output_dir: str, task: int | None = None) -> list[Path]:
    logs = Path(output_dir) / "logs"
    pattern = f"*_{task}_log.*" if task is not None else "*_log.*"
    return sorted(logs.glob(pattern), key=lambda p: (p.stat().st_mtime, p.name))


def log_tail(output_dir: str, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last lines of the newest error log (else output log) of a job."""
    files = log_files(output_dir)
    for suffix in (".err", ".out"):
        for path in reversed([p for p in files if p.suffix == suffix]):
            text = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
            if text:
                return text[-lines:]
    return []


def job_row(job: JobState, now: float) -> list[str]:
    metrics = last_metrics(job.output_dir) if job.state in ("running", "done", "failed") else None
    metrics = metrics if metrics and "step" in metrics else None
    steps = total_steps(job.output_dir)
    step = metrics.get("step") if metrics else None
    loss = metrics.get("loss") if metrics else None
    tps = metrics.get("tokens_per_s") if metrics else None
    eta = "-"
    if job.state == "running" and isinstance(step, int) and step > 0 and steps and job.started:
        eta = elapsed_text((now - job.started) / step * max(0, steps - step))
    return [job.id, job.state, job.executor_id or "-", elapsed_text(job.elapsed),
            f"{step}/{steps}" if step is not None and steps else (str(step) if step is not None else "-"),
            f"{loss:.4f}" if isinstance(loss, (int, float)) else "-",
            f"{tps:,.0f}" if isinstance(tps, (int, float)) else "-", eta]


def status_text(state: RunState) -> str:
    from compiler.table import text_table

    now = time.time()
    header = ["job", "state", "id", "elapsed", "step", "loss", "tok/s", "eta"]
    text = [f"run {state.recipe} ({state.executor}): {state.path.parent}",
            text_table(header, [job_row(job, now) for job in state.jobs.values()], right=(3, 5, 6))]
    for job in state.jobs.values():
        if job.state == "failed":
            text.append(f"\n{job.id} failed: {job.reason}")
            text += [f"  | {line}" for line in log_tail(job.output_dir)]
    counts = {s: sum(j.state == s for j in state.jobs.values()) for s in dict.fromkeys(j.state for j in state.jobs.values())}
    text.append(", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(text)


def status(run: str, *, runs: str | Path = "runs", watch: float | None = None, stream: TextIO | None = None) -> int:
    out = stream or sys.stdout
    run_dir = find_run(run, runs)
    while True:
        state = load_state(run_dir)
        refresh_from_slurm(state)
        text = status_text(state)
        if watch is None:
            print(text, file=out)
            return 1 if any(j.state == "failed" for j in state.jobs.values()) else 0
        if out.isatty():
            print("\x1b[2J\x1b[H", end="", file=out)
        print(text, file=out, flush=True)
        if all(j.state not in UNFINISHED for j in state.jobs.values()):
            return 1 if any(j.state == "failed" for j in state.jobs.values()) else 0
        time.sleep(watch)


def logs(run: str, job_id: str, *, runs: str | Path = "runs", task: int | None = None, follow: bool = False,
         stream: TextIO | None = None) -> int:
    out = stream or sys.stdout
    state = load_state(find_run(run, runs))
    if job_id not in state.jobs:
        raise StatusError(f"{job_id}: no such job in run {state.recipe} (jobs: {', '.join(state.jobs)})")
    files = log_files(state.jobs[job_id].output_dir, task)
    if not files:
        raise StatusError(f"{job_id}: no logs yet under {Path(state.jobs[job_id].output_dir) / 'logs'}")
    positions: dict[Path, int] = {}
    while True:
        for path in log_files(state.jobs[job_id].output_dir, task):
            with path.open("rb") as handle:
                handle.seek(positions.get(path, 0))
                chunk = handle.read()
                positions[path] = handle.tell()
            if chunk:
                if not follow:
                    print(f"==> {path} <==", file=out)
                out.write(chunk.decode("utf-8", "replace"))
                out.flush()
        if not follow:
            return 0
        current = load_state(state.path.parent).jobs[job_id]
        if current.state not in UNFINISHED:
            return 0
        time.sleep(0.5)


def cancel(run: str, job_ids: list[str] | None = None, *, runs: str | Path = "runs",
           stream: TextIO | None = None) -> int:
    """Cancel the named jobs (default: every unfinished job) of a run; returns 0."""
    out = stream or sys.stdout
    state = load_state(find_run(run, runs))
    unknown = [j for j in job_ids or [] if j not in state.jobs]
    if unknown:
        raise StatusError(f"no job {', '.join(unknown)} in run {state.recipe} (jobs: {', '.join(state.jobs)})")
    targets = [state.jobs[j] for j in (job_ids or state.jobs) if state.jobs[j].state in UNFINISHED]
    if not targets:
        print("nothing to cancel: no pending or running job", file=out)
        return 0
    if state.executor == "slurm":
        ids = [i for job in targets for i in slurm_ids(job)]
        if ids:
            subprocess.run(["scancel", *ids], check=False, timeout=60)
    else:
        from runtime.launch.local import CANCELLED_MARKER

        for job in targets:
            Path(job.output_dir).mkdir(parents=True, exist_ok=True)  # a pending job: the launcher will not start it
            (Path(job.output_dir) / CANCELLED_MARKER).write_text("recipe cancel\n", encoding="utf-8")
            for pgid_file in Path(job.output_dir).glob(".pgid.*"):
                try:  # SIGKILL: submitit's job wrapper ignores SIGTERM (its preemption handling)
                    os.killpg(int(pgid_file.read_text()), signal.SIGKILL)
                except (OSError, ValueError):
                    pass
    for job in targets:
        state.set(job.id, "cancelled", "recipe cancel")
        print(f"cancelled {job.id}" + (f" (Slurm {job.executor_id})" if job.executor_id and state.executor == "slurm" else ""),
              file=out)
    return 0
