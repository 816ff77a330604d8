"""`recipe launch`: run a compiled plan's jobs, with caching, run state and a report.

    recipe launch R.yaml|build/<name>/plan.json [--executor local|slurm] [--dry-run] [--force] [--runs DIR] [--only JOB ...]
                  [--skip-unimplemented] [--allow-dirty]

Given a recipe, the CLI compiles it into build/ first; given a plan.json, that exact plan runs (the
recipe is never re-resolved). Outputs: RUNS/<recipe>/<id>-<hash[:12]>/ per job (config.json, job.json
with the git commit and a hash of uncommitted changes, logs/, what the job writes, DONE.json last),
RUNS/<recipe>/state.json (atomic, after every change) and RUNS/<recipe>/report.json.
Which jobs run, are cached or skipped, and what is checked up front: runtime/launch/prepare.py.

Executors are a registry (EXECUTORS) of classes with one interface: __init__(launch, state, on_change),
run() -> bool. "local" (submitit's LocalExecutor; runtime/launch/local.py) and "slurm" (submitit's
AutoExecutor; runtime/launch/slurm.py). The default is the plan's cluster kind: slurm for a Slurm cluster,
else local.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, TextIO

from runtime.launch import prepare
from runtime.launch.prepare import LaunchError, LaunchPlan, decide, preflight
from runtime.launch.prepare import skip_unimplemented as skip_unimplemented_jobs
from runtime.launch.state import JobState, RunState


def _local(*args: Any, **kwargs: Any) -> Any:
    from runtime.launch.local import LocalLauncher

    return LocalLauncher(*args, **kwargs)


def _slurm(*args: Any, **kwargs: Any) -> Any:
    from runtime.launch.slurm import SlurmLauncher

    return SlurmLauncher(*args, **kwargs)


EXECUTORS: dict[str, Callable[..., Any]] = {"local": _local, "slurm": _slurm}


def default_executor(plan: Any) -> str:
    """The plan's cluster decides: a Slurm cluster runs on Slurm, anything else locally."""
    return "slurm" if plan.cluster.get("kind") == "slurm" else "local"


def dry_run_text(launch: LaunchPlan) -> str:
    lines = []
    width = max(len(j) for j in launch.decisions)
    verbs = {"run": "would run", "cached": "cached", "skipped": "skipped"}
    for job_id, decision in launch.decisions.items():
        lines.append(f"{verbs[decision.action]:<9}  {job_id:<{width}}  {decision.why}  -> {decision.output_dir}")
    counts = {a: sum(d.action == a for d in launch.decisions.values()) for a in verbs}
    lines.append(f"dry run: {counts['run']} to run, {counts['cached']} cached, {counts['skipped']} skipped; nothing started")
    return "\n".join(lines)


def launch(plan_path: str | Path, *, executor: str | None = None, runs: str | Path = "runs", force: bool = False,
           only: list[str] | None = None, dry_run: bool = False, skip_unimplemented: bool = False,
           allow_dirty: bool = False, stream: TextIO | None = None, live: bool | None = None) -> int:
    """Launch a plan.json; return the exit code (0 all done or cached, 1 a job failed). Raises LaunchError."""
    import sys

    from runtime.plan import PlanError, load_plan

    out = stream or sys.stdout
    if executor is not None and executor not in EXECUTORS:
        raise LaunchError([f"--executor {executor}: unknown executor (have: {', '.join(EXECUTORS)})"])
    try:
        plan = load_plan(plan_path)
    except PlanError as exc:
        raise LaunchError([str(exc)]) from None
    executor = executor or default_executor(plan)
    decisions = decide(plan, Path(runs), force=force, only=only)
    if skip_unimplemented:
        skip_unimplemented_jobs(decisions)
    preflight(decisions)
    if decisions.to_run() and not allow_dirty:
        provenance = prepare.git_provenance()
        if provenance["dirty"]:
            message = (f"the code at {provenance['repo']} has uncommitted changes (git diff HEAD): commit them, or "
                       f"pass --allow-dirty (each job's job.json records the commit and the diff's sha256)")
            if not dry_run:
                raise LaunchError([message])
            print(f"warning: {message}", file=out)
    prepare.build_environments(decisions, lambda line: print(line, file=out, flush=True), dry_run=dry_run)
    if dry_run:
        print(dry_run_text(decisions), file=out)
        if executor == "slurm":
            from runtime.launch.slurm import submission_text

            print(submission_text(decisions), file=out)
        return 0
    state = RunState(path=decisions.run_dir / "state.json", recipe=plan.name, plan=str(plan.path.resolve()), executor=executor)
    for job_id, decision in decisions.decisions.items():
        initial = {"run": "pending", "cached": "cached", "skipped": "skipped"}[decision.action]
        state.jobs[job_id] = JobState(job_id, decision.job.hash, str(decision.output_dir), initial,
                                      "" if initial == "pending" else decision.why)
    state.save()

    from runtime.launch.progress import Progress
    from runtime.launch.report import write_report

    progress = Progress(state, out, live)
    try:
        ok = EXECUTORS[executor](decisions, state, progress.update).run()
    finally:
        progress.close()
        ok_now = all(j.state in ("done", "cached", "skipped") for j in state.jobs.values())
        _, text = write_report(state, ok_now)
        print(text, file=out)
    return 0 if ok else 1


__all__ = ["EXECUTORS", "LaunchError", "launch"]
