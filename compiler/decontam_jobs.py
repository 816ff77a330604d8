"""The `decontaminate` job: every training dataset of the plan against the recipe's eval sets, before training.

It reads each dataset the recipe names (pretraining sources, SFT datasets, DPO pairs, RL prompts, the seed prompts
of generation jobs) once, whichever jobs read it, and writes per dataset the rows whose word n-grams overlap an
eval item (`drop/<key>.json`) and counts per eval set (`report.json`). Under `policy: drop` every consumer depends
on it and reads its dataset with those rows left out (`"drop": {"from_job", "file"}` in the data reference); under
`fail` a contaminated dataset fails the job, so nothing downstream runs; under `report` nothing waits for it.
Data that jobs generate (distillation, delta pairs) is checked by the generating job with the same settings.
"""
from __future__ import annotations

from typing import Any, Iterator

from compiler.job_common import JOB_ENTRIES, dump, resources
from compiler.plan import Job, PlanContext

JOB_ID = "decontaminate"
GENERATION_KINDS = ("distill", "delta_pairs")
PAIR_FIELDS = ["prompt", "chosen", "rejected"]


def build_decontam_job(ctx: PlanContext) -> None:
    spec = ctx.recipe.decontamination
    if spec is None:
        return
    settings = {"eval_sets": {name: dump(ref) for name, ref in spec.eval_sets.items()}, "ngram": spec.ngram,
                "policy": spec.policy}
    datasets: dict[str, dict[str, Any]] = {}
    consumers: list[tuple[Job, dict[str, Any], str]] = []
    for job, ref, key, fields in _dataset_refs(ctx):
        key = _key_for(datasets, key, ref)
        datasets.setdefault(key, {"ref": dict(ref), "fields": fields, "read_by": []})["read_by"].append(job.id)
        consumers.append((job, ref, key))
    for job in ctx.jobs:
        if job.kind in GENERATION_KINDS:
            job.config["decontamination"] = settings
    if not datasets:
        return
    ctx.jobs.insert(0, Job(id=JOB_ID, stage="", kind="decontaminate", entry=JOB_ENTRIES["decontaminate"],
                config={**settings, "datasets": datasets}, depends_on=[],
                resources=resources(ctx, 1, 0, 1, 0.25, None),
                estimates={"gpu_hours": 0.0, "wall_hours": None, "memory_per_gpu_bytes": None}))  # first: jobs are in dependency order
    if spec.policy == "report":
        return
    for job, ref, key in consumers:
        if spec.policy == "drop":
            ref["drop"] = {"from_job": JOB_ID, "file": f"drop/{key}.json"}
        if JOB_ID not in job.depends_on:
            job.depends_on = sorted([*job.depends_on, JOB_ID])


def _dataset_refs(ctx: PlanContext) -> Iterator[tuple[Job, dict[str, Any], str, list[str]]]:
    """(job, the data reference inside its config, a readable key, the fields whose text is checked)."""
    for job in ctx.jobs:
        config = job.config
        if job.kind in ("pretrain", "midtrain", "long_context") and isinstance(config.get("data"), dict):
            for name, ref in config["data"].get("sources", {}).items():
                yield job, ref, f"source-{name}", [ref.get("text_field") or "text"]
        elif job.kind == "regmix_swarm":
            for name, ref in config.get("sources", {}).items():
                yield job, ref, f"source-{name}", [ref.get("text_field") or "text"]
        elif job.kind == "sft" and not _generated(config["data"]):
            yield job, config["data"], f"{job.stage}-dataset", [config["data"].get("text_field") or "messages"]
        elif job.kind == "dpo" and not _generated(config["data"]):
            yield job, config["data"], f"{job.stage}-pairs", PAIR_FIELDS
        elif job.kind == "rlvr_trainer":
            yield job, config["prompts"], f"{job.stage}-prompts", [config["prompts"].get("text_field") or "prompt"]
        elif job.kind in GENERATION_KINDS:
            block = config["distill" if job.kind == "distill" else "delta"]
            yield job, block["prompts"], f"{job.stage}-{'seed' if job.kind == 'distill' else 'delta'}-prompts", \
                [block["prompts"].get("text_field") or "prompt"]


def _generated(ref: dict[str, Any]) -> bool:
    return "from_job" in ref


def _identity(ref: dict[str, Any]) -> tuple:
    return tuple(sorted((k, v) for k, v in ref.items() if k in ("hf", "path", "subset", "split", "text_field")))


def _key_for(datasets: dict[str, dict[str, Any]], key: str, ref: dict[str, Any]) -> str:
    """The key of an identical reference already seen (a source read by several jobs), else `key` made unique."""
    for existing, entry in datasets.items():
        if _identity(entry["ref"]) == _identity(ref):
            return existing
    unique, n = key, 2
    while unique in datasets:
        unique, n = f"{key}-{n}", n + 1
    return unique
