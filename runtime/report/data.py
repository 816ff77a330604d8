"""The report's data section: what the decontamination check found and dropped, and what the generation jobs made
(every filter's count for distillation; both models' accuracy and their gap for delta pairs). Read from the jobs'
own outputs (`report.json`, `DONE.json`); a job not done yet is left out."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

Table = Callable[[Sequence[str], list[list[str]], Sequence[int]], str]
KINDS = ("decontaminate", "distill", "delta_pairs")
# Counts in the order the jobs apply their filters (DONE.json stores keys sorted); unknown keys follow.
ORDER = ("chosen_accuracy", "rejected_accuracy", "gap", "chosen_beats_rejected", "prompts", "generated", "empty",
         "hit_max_tokens", "wrong_answer", "identical_or_empty", "not_chosen_correct", "not_chosen_beats_rejected",
         "exact_duplicates", "near_duplicates", "over_length", "contaminated", "kept")


@dataclass
class DataJob:
    id: str
    kind: str
    data: dict[str, Any] = field(default_factory=dict)


def _read(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def read_data_job(job_id: str, kind: str, output_dir: Path) -> DataJob | None:
    data = _read(output_dir / ("report.json" if kind == "decontaminate" else "DONE.json"))
    return DataJob(job_id, kind, data) if data else None


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def decontam_table(job: DataJob, table: Table) -> tuple[str, str]:
    sets: list[str] = sorted({s for d in job.data.get("datasets", {}).values() for s in d.get("by_eval_set", {})})
    rows = []
    for key, d in sorted(job.data.get("datasets", {}).items()):
        hits = [f"{d['by_eval_set'][s]['rows']} rows / {d['by_eval_set'][s]['items']} items"
                if s in d.get("by_eval_set", {}) else "0" for s in sets]
        rows.append([key, _number(d.get("rows", 0)), _number(d.get("contaminated", 0)), *hits])
    policy = job.data.get("policy", "?")
    outcome = {"drop": "dropped before training", "fail": "the run stops", "report": "reported only"}.get(policy, policy)
    title = (f"{job.id}: {job.data.get('ngram', '?')}-gram overlap with the eval sets "
             f"(policy {policy}: contaminated rows are {outcome})")
    headers = ["dataset", "rows", "contaminated", *(f"hits in {s}" for s in sets)]
    return title, table(headers, rows, range(1, len(headers)))


def generation_table(job: DataJob, table: Table) -> tuple[str, str]:
    counts = job.data.get("counts", {})
    gap = job.data.get("gap", {})
    values = {**gap, **counts}
    names = [n for n in ORDER if n in values] + sorted(n for n in values if n not in ORDER)
    rows = [[name.replace("_", " "), _number(values[name])] for name in names]
    what = "distilled SFT samples" if job.kind == "distill" else "delta pairs (chosen vs rejected)"
    generation = job.data.get("generation", {})
    seconds = generation.get("seconds") if "seconds" in generation else sum(
        g.get("seconds", 0) for g in generation.values() if isinstance(g, dict))
    return f"{job.id}: {what}; generation {seconds:.0f} s", table(["", "value"], rows, (1,))


def data_sections(jobs: Sequence[DataJob], table: Table) -> list[tuple[str, str]]:
    return [decontam_table(j, table) if j.kind == "decontaminate" else generation_table(j, table) for j in jobs]
