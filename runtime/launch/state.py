"""Run state: `runs/<recipe>/state.json`, rewritten atomically (temporary file, then rename) after every change.

Per job: its hash, state (pending / cached / running / done / failed / cancelled / skipped), output
folder, start and end times and the reason it ended (or why it is cached, skipped or cancelled).
Read it with `json.load`; it is valid JSON at every moment because it is never written in place.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from runtime.outputs import atomic_write_text

STATES = ("pending", "cached", "running", "done", "failed", "cancelled", "skipped")
FINAL = frozenset({"cached", "done", "failed", "cancelled", "skipped"})


def write_json_atomically(path: Path, data: Any) -> None:
    """Write `data` as JSON to `path` atomically (keys in insertion order: jobs stay in plan order)."""
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


@dataclass
class JobState:
    id: str
    hash: str
    output_dir: str
    state: str = "pending"
    reason: str = ""  # why it is cached / why it runs / its exit reason
    started: float | None = None
    ended: float | None = None
    executor_id: str | None = None  # submitit's job id(s) (local: the controller's pid)

    @property
    def elapsed(self) -> float | None:
        if self.started is None:
            return None
        return (self.ended or time.time()) - self.started


@dataclass
class RunState:
    """The whole launch's state; `save()` after every change (the Launcher calls `set`, which does)."""

    path: Path
    recipe: str
    plan: str
    executor: str
    jobs: dict[str, JobState] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    def set(self, job_id: str, state: str, reason: str | None = None, **extra: Any) -> None:
        """Change one job's state (stamping start / end times) and save."""
        assert state in STATES, state
        job = self.jobs[job_id]
        job.state = state
        if reason is not None:
            job.reason = reason
        if state == "running" and job.started is None:
            job.started = time.time()
        if state in ("done", "failed") or (state == "cancelled" and job.started is not None):
            job.ended = time.time()
        for key, value in extra.items():
            setattr(job, key, value)
        self.save()

    def to_json(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "plan": self.plan,
            "executor": self.executor,
            "started": self.started,
            "updated": time.time(),
            "jobs": {job_id: asdict(job) for job_id, job in self.jobs.items()},
        }

    def save(self) -> None:
        write_json_atomically(self.path, self.to_json())
