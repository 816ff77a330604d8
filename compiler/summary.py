"""The table `recipe compile` prints: one row per job, then totals and warnings."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from compiler.table import gib, hours, text_table


def _gpus(job: dict[str, Any]) -> str:
    res = job["resources"]
    where = f"{res['nodes']}x{res['gpus_per_node']}" if res["gpus"] else f"cpu x{res['processes']}"
    return f"{job['array']['size']} × {where}" if job["array"] else where


def compile_summary(plan: dict[str, Any], target: Path) -> str:
    rows = [
        [job["id"], job["stage"], job["kind"], ", ".join(job["depends_on"]) or "-", _gpus(job),
         gib(job["estimates"].get("memory_per_gpu_bytes")), hours(job["estimates"].get("gpu_hours")),
         hours(job["estimates"].get("wall_hours")), job["resources"]["time_limit"], job["hash"][:10]]
        for job in plan["jobs"]
    ]
    t = plan["totals"]
    lines = [
        text_table(["job", "stage", "kind", "after", "resources", "GiB/dev", "GPU-h", "wall-h", "time", "hash"], rows, right=(5, 6, 7)),
        "",
        f"{len({j['stage'] for j in plan['jobs']})} stages, {t['jobs']} jobs ({t['tasks']} tasks), "
        f"{hours(t['gpu_hours'])} GPU-hours"
        + (f" (+ unknown for {', '.join(t['gpu_hours_unknown_for'])})" if t["gpu_hours_unknown_for"] else "")
        + (f", up to {t['max_gpus']} GPUs at once" if t["max_gpus"] else ", CPU only"),
    ]
    lines += plan["warnings"]
    lines.append(f"wrote {target}/plan.json and {len(plan['jobs'])} job folders")
    return "\n".join(lines)
