"""The plan: a DAG of jobs with resources, resolved configs, estimates and content hashes.

`build_plan(recipe, tree)` is pure: it turns a validated recipe into plain data (JSON-ready)
and collects every semantic problem as a located diagnostic. Launch, diff and explain read
the plan, never the recipe.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from compiler.diagnostics import Diagnostic, RecipeError, did_you_mean, format_path
from compiler.hashing import canonical_json, sha256_hex
from compiler.located import LocatedMap, locate
from spec.recipe import Recipe

FORMAT_VERSION = 1


def is_local_path(ref: str) -> bool:
    """Whether a model or tokenizer reference names a local folder (else a stage name or a Hugging Face id)."""
    return ref.startswith(("/", "./", "../", "~"))


@dataclass
class Job:
    id: str
    stage: str
    kind: str
    entry: str
    config: dict[str, Any]
    resources: dict[str, Any]
    estimates: dict[str, Any]
    depends_on: list[str] = field(default_factory=list)
    array: dict[str, int] | None = None
    group: str | None = None  # jobs of one group start together (RL trainer + rollout sidecar)
    description: str = ""  # the stage's free text: shown in plans and diffs, not hashed
    hash: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "stage": self.stage,
            "description": self.description,
            "kind": self.kind,
            "entry": self.entry,
            "depends_on": self.depends_on,
            "array": self.array,
            "group": self.group,
            "resources": self.resources,
            "config": self.config,
            "estimates": self.estimates,
            "hash": self.hash,
        }


@dataclass
class PlanContext:
    """State shared by the stage builders while a plan is built."""

    recipe: Recipe
    tree: LocatedMap
    diagnostics: list[Diagnostic] = field(default_factory=list)
    jobs: list[Job] = field(default_factory=list)
    stage_job: dict[str, str] = field(default_factory=dict)  # stage name -> job producing its checkpoint
    stage_model: dict[str, Any] = field(default_factory=dict)  # stage name -> ModelSpec after the stage
    mix_budget_tokens: int = 0  # tokens trained on the RegMix solution (epoch constraints)
    mix_consumers: list[str] = field(default_factory=list)
    plan_extras: dict[str, Any] = field(default_factory=dict)  # top-level plan entries besides jobs (evals)

    def _report(self, parts: tuple[str | int, ...], message: str, severity: str) -> None:
        loc, _ = locate(self.tree, list(parts))
        self.diagnostics.append(Diagnostic(loc or self.tree.loc, format_path(parts), message, severity))  # type: ignore[arg-type]

    def error(self, parts: tuple[str | int, ...], message: str) -> None:
        self._report(parts, message, "error")

    def warn(self, parts: tuple[str | int, ...], message: str) -> None:
        self._report(parts, message, "warning")

    def add(self, job: Job) -> Job:
        self.jobs.append(job)
        return job

    def resolve_model_ref(self, ref: str | None, at: tuple, index: int) -> tuple[dict[str, Any], str | None]:
        """A `from`/teacher/chosen/rejected reference of stage `index` -> (init description, producing job id or None)."""
        stage_names = [stage.name for stage in self.recipe.stages]
        if ref is None:
            return {"kind": "random"}, None
        if ref in self.stage_job:
            return {"kind": "stage", "stage": ref, "job": self.stage_job[ref]}, self.stage_job[ref]
        if ref in stage_names:
            later = stage_names.index(ref) >= index
            self.error(at, f"'{ref}' is {'this stage' if stage_names.index(ref) == index else 'a later stage'}: name an earlier stage" if later else f"stage '{ref}' produces no checkpoint")
            return {"kind": "stage", "stage": ref, "job": ref}, None
        if is_local_path(ref):
            return {"kind": "path", "path": ref}, None
        if "/" in ref:
            return {"kind": "hf", "id": ref}, None
        self.error(at, f"unknown stage '{ref}'{did_you_mean(ref, stage_names[:index])}; use an earlier stage's name, a Hugging Face id (org/name) or a path (./folder)")
        return {"kind": "stage", "stage": ref, "job": ref}, None


def assign_hashes(jobs: list[Job]) -> None:
    """hash = sha256(canonical JSON of the job's identity + its parents' hashes), in dependency order."""
    by_id = {job.id: job for job in jobs}
    done: set[str] = set()

    def visit(job: Job) -> None:
        if job.id in done:
            return
        for parent in job.depends_on:
            visit(by_id[parent])
        identity = {
            "entry": job.entry,
            "kind": job.kind,
            "array": job.array,
            "config": job.config,
            "parents": [by_id[p].hash for p in job.depends_on],
        }
        job.hash = sha256_hex(canonical_json(identity))
        done.add(job.id)

    for job in jobs:
        visit(job)


def build_plan(recipe: Recipe, tree: LocatedMap) -> dict[str, Any]:
    """Resolve a validated recipe into the plan; raise RecipeError with every error found."""
    from compiler.stage_jobs import build_stage_jobs  # registry of builders; imports this module

    ctx = PlanContext(recipe, tree)
    build_stage_jobs(ctx)
    errors = [d for d in ctx.diagnostics if d.severity == "error"]
    if errors:
        raise RecipeError(sorted(errors, key=lambda d: (d.loc.file, d.loc.line, d.loc.col, d.path)))
    assign_hashes(ctx.jobs)
    jobs = [job.to_json() for job in ctx.jobs]
    return {
        "format_version": FORMAT_VERSION,
        "recipe": {"name": recipe.name, "description": recipe.description},
        "cluster": recipe.cluster.model_dump(mode="json"),
        "jobs": jobs,
        **ctx.plan_extras,
        "totals": totals(jobs),
        "warnings": [str(d) for d in ctx.diagnostics if d.severity == "warning"],
    }


def _gpus_at_once(jobs: list[dict[str, Any]]) -> dict[str, int]:
    """GPUs each unit of scheduling holds at once: a job (an array at its parallelism) or a co-started group."""
    units: dict[str, int] = {}
    for job in jobs:
        unit = job["group"] or job["id"]
        units[unit] = units.get(unit, 0) + job["resources"]["gpus"] * (job["array"] or {}).get("parallelism", 1)
    return units


def totals(jobs: list[dict[str, Any]]) -> dict[str, Any]:
    gpu_hours = sum(j["estimates"].get("gpu_hours") or 0.0 for j in jobs)
    unknown = [j["id"] for j in jobs if j["estimates"].get("gpu_hours") is None]
    return {
        "jobs": len(jobs),
        "tasks": sum((j["array"] or {}).get("size", 1) for j in jobs),
        "gpu_hours": round(gpu_hours, 3),
        "gpu_hours_unknown_for": unknown,
        "max_gpus": max(_gpus_at_once(jobs).values(), default=0),
    }
