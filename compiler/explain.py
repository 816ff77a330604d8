"""Derived numbers of a compiled recipe: model size, KV cache, and per stage scale, memory and GPU-hours."""
from __future__ import annotations

from typing import Any

from compiler import estimates
from compiler.build import Compiled
from compiler.table import count, gib, hours, text_table


def stage_summaries(plan: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per stage: its jobs, peak memory per GPU, GPU-hours and wall hours (summed over its jobs)."""
    stages: dict[str, dict[str, Any]] = {}
    for job in plan["jobs"]:
        s = stages.setdefault(job["stage"], {"jobs": [], "gpus": 0, "memory_per_gpu_bytes": None, "gpu_hours": 0.0, "wall_hours": 0.0})
        est, res = job["estimates"], job["resources"]
        s["jobs"].append(job["id"])
        s["gpus"] += res["gpus"] * ((job["array"] or {}).get("parallelism", 1))
        mem = est.get("memory_per_gpu_bytes")
        if mem is not None and job["kind"] != "rlvr_rollout":
            s["memory_per_gpu_bytes"] = max(s["memory_per_gpu_bytes"] or 0, mem)
        if job["kind"] == "rlvr_rollout":
            s["rollout_memory_per_gpu_bytes"] = max(s.get("rollout_memory_per_gpu_bytes") or 0, mem or 0)
        s["gpu_hours"] = None if est.get("gpu_hours") is None or s["gpu_hours"] is None else round(s["gpu_hours"] + est["gpu_hours"], 4)
        s["wall_hours"] = None if est.get("wall_hours") is None or s["wall_hours"] is None else max(s["wall_hours"], est["wall_hours"])
        scale = job["config"].get("scale")
        if scale is not None and job["kind"] != "rlvr_rollout":
            s.setdefault("scale", scale)
            s.setdefault("tokens", est.get("tokens"))
        if "step_seconds" in est:
            s.setdefault("step_seconds", est["step_seconds"])
            s.setdefault("rollouts_per_step", est["rollouts_per_step"])
    return stages


def explain_data(compiled: Compiled) -> dict[str, Any]:
    model = compiled.recipe.model
    counts = estimates.param_counts(model)
    return {
        "format_version": compiled.plan["format_version"],
        "recipe": compiled.recipe.name,
        "model": {
            "params": counts.total,
            "non_embedding_params": counts.non_embedding,
            "embedding_params": counts.embedding,
            "output_params": counts.output,
            "head_dim": model.resolved_head_dim,
            "global_layers": model.global_layer_count(),
            "kv_cache_bytes_per_token": estimates.kv_cache_bytes_per_token(model),
            "kv_cache_bytes_at_max_seq_len": estimates.kv_cache_bytes(model, model.max_seq_len),
            "training_flops_per_token": estimates.training_flops_per_token(model, model.max_seq_len),
        },
        "stages": stage_summaries(compiled.plan),
        "totals": compiled.plan["totals"],
        "warnings": compiled.plan["warnings"],
    }


def explain_text(data: dict[str, Any]) -> str:
    m = data["model"]
    lines = [
        f"recipe {data['recipe']}",
        f"model: {m['params']:,} parameters ({m['non_embedding_params']:,} non-embedding), head_dim {m['head_dim']}, "
        f"{m['global_layers']} global-attention layers",
        f"KV cache: {m['kv_cache_bytes_per_token']:,} bytes/token at full context on every layer; "
        f"{gib(m['kv_cache_bytes_at_max_seq_len'])} GiB per sequence at max_seq_len (sliding windows honoured)",
        f"training FLOPs/token at max_seq_len: {m['training_flops_per_token']:.3g}",
        "",
    ]
    rows = []
    for name, s in data["stages"].items():
        sc = s.get("scale") or {}
        par = sc.get("parallelism") or {}
        par_text = " ".join(f"{k}{v}" for k, v in par.items() if v > 1) or "-"
        rows.append([
            name, s["jobs"][0] + (f" +{len(s['jobs']) - 1}" if len(s["jobs"]) > 1 else ""), str(s["gpus"]), par_text,
            str(sc.get("global_batch_sequences", "-")), str(sc.get("grad_accum", "-")), str(sc.get("seq_len", "-")),
            count(sc.get("steps")), count(s.get("tokens")), gib(s["memory_per_gpu_bytes"]),
            gib(s.get("rollout_memory_per_gpu_bytes")) if "rollout_memory_per_gpu_bytes" in s else "-",
            hours(s["gpu_hours"]), hours(s["wall_hours"]),
        ])
    lines.append(text_table(
        ["stage", "jobs", "GPUs", "parallel", "batch", "accum", "seq", "steps", "tokens", "GiB/GPU", "rollout GiB", "GPU-h", "wall-h"],
        rows, right=range(2, 13),
    ))
    for name, s in data["stages"].items():
        if "step_seconds" in s:
            st = s["step_seconds"]
            generate = f"generate {st['generate']:.1f}s"
            if "generate_max" in st:
                generate += f" (up to {st['generate_max']:.1f}s with every active-sampling draw)"
            lines.append(f"{name}: {s['rollouts_per_step']} rollouts/step; per step train {st['train']:.1f}s, "
                         f"{generate} -> {st['step']:.1f}s")
    t = data["totals"]
    at_once = f"up to {t['max_gpus']} GPUs at once" if t["max_gpus"] else "CPU only"
    lines.append(f"total: {t['jobs']} jobs ({t['tasks']} tasks), {hours(t['gpu_hours'])} GPU-hours, {at_once}")
    lines += data["warnings"]
    return "\n".join(lines)
