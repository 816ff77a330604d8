"""Before a launch starts anything: decide what runs and why, and check that it can run.

Rules (also in `recipe launch --help`):
- A job's output folder is `RUNS/<recipe>/<id>-<hash[:12]>/`; it is *cached* when it holds `DONE.json`
  (the job writes it last), unless `--force`.
- A job that runs says why: "--force", "no DONE.json (unfinished or failed before)", or for a new hash what
  changed since the job's last run in RUNS/<recipe>/ ("changed: optim.lr 1e-05 → 2e-05", "parent changed"),
  or "no output yet".
- `--only JOB ...` runs those jobs plus every ancestor of theirs that is not cached; the rest is
  "skipped". Without `--only` every job is selected.
- An RL group (jobs sharing `group`) is one unit: if any member runs, all of them run, together.
- Only jobs that will run need their entry: a selected, uncached job whose entry the runtime lacks fails
  the launch up front (`<job>: not implemented yet: <kind> (<entry>)`), as do missing local
  tokenizer / data paths (resolved against the plan's recipe_dir). Cached and skipped jobs are not checked.
  With `--skip-unimplemented` such jobs, and every job below them, are skipped instead, and the report
  says so.
- A job that names an `environment` (the eval job's inference environment, runtime/environments.py) needs it
  built before it starts: the launch builds it once, up front, saying so in one line; a dry run says it would.
"""
from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from compiler.plan import FORMAT_VERSION, is_local_path
from runtime.launch.state import write_json_atomically
from runtime.outputs import input_env_var
from runtime.plan import Plan, PlannedJob

DONE = "DONE.json"
REPO = Path(__file__).resolve().parents[2]


class LaunchError(Exception):
    """User-facing launch problems: one line each; the CLI prints them and exits 2."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


@dataclass
class Decision:
    """What the launch does with one job and why."""

    job: PlannedJob
    output_dir: Path
    action: str  # "run" | "cached" | "skipped"
    why: str


@dataclass
class LaunchPlan:
    plan: Plan
    run_dir: Path  # RUNS/<recipe>
    decisions: dict[str, Decision] = field(default_factory=dict)

    def to_run(self) -> list[PlannedJob]:
        return [d.job for d in self.decisions.values() if d.action == "run"]

    def output_dir(self, job_id: str) -> Path:
        return self.decisions[job_id].output_dir


def decide(plan: Plan, runs: Path, *, force: bool = False, only: list[str] | None = None) -> LaunchPlan:
    """Cached / run / skipped for every job, with the reason (see the module docstring for the rules)."""
    run_dir = (runs / plan.name).resolve()
    ids = {job.id for job in plan.jobs}
    unknown = [j for j in only or [] if j not in ids]
    if unknown:
        raise LaunchError([f"--only: no job {j!r} in {plan.path} (jobs: {', '.join(sorted(ids))})" for j in unknown])
    done = {job.id: (run_dir / job.output_name / DONE).is_file() for job in plan.jobs}
    selected = set(ids)
    if only:
        selected = set()
        todo = list(only)
        while todo:
            job = plan.job(todo.pop())
            if job.id in selected:
                continue
            selected.add(job.id)
            todo += [p for p in job.depends_on if not done[p]]
            if job.group:
                todo += [j.id for j in plan.jobs if j.group == job.group]
    named = set(only or ids)
    out = LaunchPlan(plan, run_dir)
    for job in plan.jobs:
        folder = run_dir / job.output_name
        if job.id not in selected:
            action, why = ("cached", f"{DONE} present") if done[job.id] else ("skipped", "not selected (--only)")
        elif force and job.id in named:
            action, why = "run", "--force"
        elif done[job.id]:
            action, why = "cached", f"{DONE} present"
        elif folder.exists():
            action, why = "run", f"no {DONE} (unfinished or failed before)"
        else:
            action, why = "run", why_new_hash(run_dir, job)
        out.decisions[job.id] = Decision(job, folder, action, why)
    # A group runs as one: a cached member reruns with the others.
    for decision in out.decisions.values():
        if decision.action == "cached" and decision.job.group:
            if any(d.action == "run" and d.job.group == decision.job.group for d in out.decisions.values()):
                decision.action, decision.why = "run", f"group {decision.job.group} runs together"
    return out


MAX_CHANGES_SHOWN = 3


def previous_config(run_dir: Path, job: PlannedJob) -> dict[str, Any] | None:
    """The config.json of this job's most recent earlier run (another hash) under run_dir, if any."""
    import json

    folders = [p for p in run_dir.glob(f"{job.id}-*") if p.name != job.output_name and (p / "config.json").is_file()
               and p.name[len(job.id) + 1:].isalnum()]
    for folder in sorted(folders, key=lambda p: (p / "config.json").stat().st_mtime, reverse=True):
        try:
            return json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
    return None


def why_new_hash(run_dir: Path, job: PlannedJob) -> str:
    """Why a job without output runs: what changed since its last run ("changed: optim.lr 1e-05 -> 2e-05"),
    "parent changed" (same config, other inputs), or "no output yet" (never ran)."""
    from compiler.diff import changed_fields, show

    before = previous_config(run_dir, job)
    if before is None:
        return "no output yet"
    changes = changed_fields(before.get("config"), job.config)  # what the hash covers, but the parents
    changes += changed_fields(before.get("array"), job.array, "array")
    changes += changed_fields(before.get("entry"), job.entry, "entry")
    if not changes:
        return "parent changed"
    shown = [f"{c['path']} {show(c['old'], 24)} → {show(c['new'], 24)}" for c in changes[:MAX_CHANGES_SHOWN]]
    more = f" (+{len(changes) - MAX_CHANGES_SHOWN} more)" if len(changes) > MAX_CHANGES_SHOWN else ""
    return "changed: " + ", ".join(shown) + more


def implemented(job: PlannedJob) -> bool:
    """Whether the runtime has the job's entry (an entry that fails to import counts as present: preflight
    reports the import error)."""
    from runtime.run_job import resolve_entry

    try:
        return resolve_entry(job.entry) is not None
    except Exception:  # noqa: BLE001
        return True


def skip_unimplemented(launch: LaunchPlan) -> list[str]:
    """`--skip-unimplemented`: jobs that would run but whose entry the runtime lacks are skipped, and so is every
    job below them (and their RL group); returns the skipped ids. The report lists them with the reason."""
    skipped: list[str] = []
    blocked: dict[str, str] = {}  # job -> the unimplemented job it waits for
    for job_id, decision in launch.decisions.items():  # plan order: parents before children
        if decision.action != "run":
            continue
        job = decision.job
        if not implemented(job):
            blocked[job_id] = job_id
            decision.action, decision.why = "skipped", f"not implemented yet: {job.kind}"
        elif waits := [blocked[p] for p in job.depends_on if p in blocked]:
            blocked[job_id] = waits[0]
            decision.action, decision.why = "skipped", f"needs {waits[0]} (not implemented yet)"
        else:
            continue
        skipped.append(job_id)
    for decision in launch.decisions.values():  # a group runs together or not at all
        group = decision.job.group
        if decision.action == "run" and group and any(
                d.job.group == group and d.job.id in blocked for d in launch.decisions.values()):
            decision.action, decision.why = "skipped", f"group {group} has a job not implemented yet"
            skipped.append(decision.job.id)
    return skipped


def _local_paths(config: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """(field path, value) of every local path in a job config: `tokenizer` values that look like
    paths (./ ../ / ~) and every `path` of a data source (Hugging Face ids live under `hf`)."""
    if isinstance(config, dict):
        for key, value in config.items():
            here = f"{where}.{key}" if where else key
            if key == "path" and isinstance(value, str):
                yield here, value
            elif key == "tokenizer" and isinstance(value, str) and is_local_path(value):
                yield here, value
            else:
                yield from _local_paths(value, here)
    elif isinstance(config, list):
        for i, value in enumerate(config):
            yield from _local_paths(value, f"{where}[{i}]")


def preflight(launch: LaunchPlan) -> None:
    """Raise LaunchError listing every job that would run but cannot: missing entry, missing local paths."""
    from runtime.run_job import resolve_entry

    problems: list[str] = []
    missing: dict[Path, list[str]] = {}  # each missing path once: "<first job>: <field>: <value> not found (...)"
    for job in launch.to_run():
        try:
            function = resolve_entry(job.entry)
        except Exception as exc:  # noqa: BLE001 - a broken module is reported, not raised
            problems.append(f"{job.id}: cannot import {job.entry}: {exc.__class__.__name__}: {exc}")
        else:
            if function is None:
                problems.append(f"{job.id}: not implemented yet: {job.kind} ({job.entry}); "
                                f"--skip-unimplemented runs the rest")
        for field_path, value in _local_paths(job.config):
            resolved = (launch.plan.recipe_dir / Path(value).expanduser()).resolve()
            if not resolved.exists():
                if resolved not in missing:
                    missing[resolved] = [f"{job.id}: {field_path}: {value} not found (looked for {resolved}"]
                elif job.id not in missing[resolved]:
                    missing[resolved].append(job.id)
    for first, *others in missing.values():
        problems.append(first + (f"; also needed by {', '.join(others)})" if others else ")"))
    problems += _unknown_environments(launch)
    if problems:
        raise LaunchError(problems)


def _environments(launch: LaunchPlan) -> dict[str, list[str]]:
    """Job environment (`config.environment`, runtime.environments) -> the jobs about to run that need it."""
    needed: dict[str, list[str]] = {}
    for job in launch.to_run():
        name = job.config.get("environment") if isinstance(job.config, dict) else None
        if name:
            needed.setdefault(name, []).append(job.id)
    return needed


def _unknown_environments(launch: LaunchPlan) -> list[str]:
    from runtime import environments

    return [f"{jobs[0]}: environment: unknown {name!r} (known: {', '.join(sorted(environments.ENVIRONMENTS))})"
            for name, jobs in _environments(launch).items() if name not in environments.ENVIRONMENTS]


def environments_to_build(launch: LaunchPlan) -> list[str]:
    """The job environments that jobs about to run need and that are not built (or whose pins changed)."""
    from runtime import environments

    return sorted(name for name in _environments(launch)
                  if name in environments.ENVIRONMENTS and not environments.is_built(name))


def build_environments(launch: LaunchPlan, log: Callable[[str], object], *, dry_run: bool) -> None:
    """Before any job runs: build the environments its jobs need, once (a dry run only says it would)."""
    from runtime import environments

    for name in environments_to_build(launch):
        if dry_run:
            log(f"would build {environments.describe(name)}")
            continue
        try:
            environments.ensure(name, log=log)
        except environments.EnvironmentBuildError as exc:
            raise LaunchError([str(exc)]) from None


def git_provenance(repo: Path = REPO) -> dict[str, str | None]:
    """The code's git commit and the sha256 of `git diff HEAD` (uncommitted changes; sha of b'' when clean)."""
    def git(*args: str) -> bytes | None:
        try:
            return subprocess.run(["git", *args], cwd=repo, capture_output=True, check=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return None

    head = git("rev-parse", "HEAD")
    diff = git("diff", "HEAD")
    return {
        "repo": str(repo),
        "commit": head.decode().strip() if head else None,
        "diff_sha256": hashlib.sha256(diff).hexdigest() if diff is not None else None,
        "dirty": bool(diff) if diff is not None else None,
    }


def job_config(plan: Plan, job: PlannedJob) -> dict[str, Any]:
    """The job's config.json as `recipe compile` writes it, from the plan (what runs is the plan), with an
    absolute recipe_dir so paths resolve from the output folder."""
    return {
        "format_version": FORMAT_VERSION,
        "recipe": plan.name,
        "recipe_dir": str(plan.recipe_dir),
        "id": job.id, "stage": job.stage, "kind": job.kind, "entry": job.entry, "hash": job.hash,
        "depends_on": list(job.depends_on), "array": job.array, "group": job.group,
        "resources": job.resources, "config": job.config,
    }


def write_job_folder(launch: LaunchPlan, job: PlannedJob, *, executor: str, provenance: dict[str, Any],
                     stamp: str) -> Path:
    """Before a job starts (or is submitted): its output folder with config.json and job.json (plan, executor, git
    provenance, `stamp`: the time it started or was submitted), and no DONE.json (--force: a rerun that fails must
    not look finished). Returns config.json's path."""
    import time

    out = launch.output_dir(job.id)
    out.mkdir(parents=True, exist_ok=True)
    (out / DONE).unlink(missing_ok=True)
    config_path = out / "config.json"
    write_json_atomically(config_path, job_config(launch.plan, job))
    write_json_atomically(out / "job.json", {
        "id": job.id, "hash": job.hash, "kind": job.kind, "entry": job.entry, "plan": str(launch.plan.path),
        stamp: time.time(), "executor": executor, "git": provenance,
    })
    return config_path


def ensure_done(launch: LaunchPlan, job: PlannedJob) -> None:
    """A job that ended well but whose entry wrote no DONE.json gets a minimal one from the launcher."""
    import time

    done = launch.output_dir(job.id) / DONE
    if not done.exists():
        write_json_atomically(done, {"job": job.id, "hash": job.hash, "finished": time.time(), "written_by": "launcher"})


def job_env(launch: LaunchPlan, job: PlannedJob) -> dict[str, str]:
    """RECIPE_OUTPUT_DIR, RECIPE_INPUT_<PARENT> for each parent, RECIPE_PEER_<MEMBER> for each other member of
    its RL group, RECIPE_RUN_DIR, RECIPE_JOB_ID."""
    env = {
        "RECIPE_OUTPUT_DIR": str(launch.output_dir(job.id)),
        "RECIPE_RUN_DIR": str(launch.run_dir),
        "RECIPE_JOB_ID": job.id,
        "RECIPE_RECIPE_DIR": str(launch.plan.recipe_dir),
    }
    for parent in job.depends_on:
        env[input_env_var(parent)] = str(launch.output_dir(parent))
    if job.group:  # RL group members find each other (addresses, weights) through their output folders
        for peer in launch.plan.jobs:
            if peer.group == job.group and peer.id != job.id:
                env[peer_env_var(peer.id)] = str(launch.output_dir(peer.id))
    return env


def group_cpu_env(plan: Plan, job: PlannedJob, cores: Sequence[int]) -> dict[str, str]:
    """RECIPE_CPU_CORES for a member of a CPU-only RL group run on this machine: the group's members (trainer
    first) split `cores` between them, as they would get separate GPUs on a cluster (runtime/cpu_cores.py). Empty
    for other jobs, for groups with GPUs and when there are fewer cores than members."""
    from runtime.cpu_cores import ENV, format_cores, split_cores

    if not job.group:
        return {}
    members = sorted((j for j in plan.jobs if j.group == job.group), key=lambda j: (j.kind != "rlvr_trainer", j.id))
    if any(int(j.resources.get("gpus_per_node") or 0) > 0 for j in members):
        return {}
    shares = split_cores(cores, len(members))
    if shares is None:
        return {}
    return {ENV: format_cores(shares[[j.id for j in members].index(job.id)])}


def peer_env_var(job_id: str) -> str:
    """RECIPE_PEER_<JOB>: the output folder of another member of this job's RL group."""
    return input_env_var(job_id).replace("RECIPE_INPUT_", "RECIPE_PEER_", 1)
