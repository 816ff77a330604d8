"""The plan contract: how the runtime and launchers read `build/<name>/plan.json`.

The compiler writes the plan (compiler/plan.py); everything that runs jobs reads it through
`load_plan`, never the recipe, so what was reviewed is what runs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compiler.plan import FORMAT_VERSION
from runtime.outputs import output_name


class PlanError(ValueError):
    pass


@dataclass(frozen=True)
class PlannedJob:
    id: str
    stage: str
    kind: str
    entry: str  # "package.module:function"
    depends_on: tuple[str, ...]
    array: dict[str, int] | None
    group: str | None
    resources: dict[str, Any]
    config: dict[str, Any]
    estimates: dict[str, Any]
    hash: str
    description: str = ""

    @property
    def output_name(self) -> str:
        return output_name(self.id, self.hash)


@dataclass(frozen=True)
class Plan:
    path: Path
    name: str
    recipe_dir: Path
    jobs: tuple[PlannedJob, ...]
    cluster: dict[str, Any] = field(default_factory=dict)  # the resolved cluster: kind, setup lines, ...

    def job(self, job_id: str) -> PlannedJob:
        for job in self.jobs:
            if job.id == job_id:
                return job
        raise KeyError(job_id)

    def topological(self) -> list[PlannedJob]:
        """Jobs in an order where every job comes after its dependencies (the plan's order already is)."""
        return list(self.jobs)


def load_plan(path: str | Path) -> Plan:
    """Read and check a plan.json (format version, ids, dependencies point backwards)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise PlanError(f"{path}: cannot read plan: {exc}") from None
    if data.get("format_version") != FORMAT_VERSION:
        raise PlanError(f"{path}: plan format_version {data.get('format_version')!r}, this runtime reads {FORMAT_VERSION}: compile again")
    seen: set[str] = set()
    jobs = []
    for raw in data["jobs"]:
        missing = [d for d in raw["depends_on"] if d not in seen]
        if missing:
            raise PlanError(f"{path}: job {raw['id']} depends on {missing} which do not come before it")
        seen.add(raw["id"])
        jobs.append(PlannedJob(**{**raw, "depends_on": tuple(raw["depends_on"])}))
    recipe_dir = (path.parent / data.get("recipe_dir", ".")).resolve()
    return Plan(path=path, name=data["recipe"]["name"], recipe_dir=recipe_dir, jobs=tuple(jobs),
                cluster=dict(data.get("cluster") or {}))
