"""The end of a launch: `runs/<recipe>/report.json` and a short printed report.

Per job: state, why (cached / exit reason), elapsed, output folder, and what its DONE.json reports
(final loss and metrics, when the job writes them: keys `loss`/`final_loss`, `metrics`, `eval`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runtime.launch.prepare import DONE
from runtime.launch.progress import elapsed_text
from runtime.launch.state import RunState, write_json_atomically

_SUMMARY_KEYS = ("final_loss", "loss", "metrics", "eval")


def _done_summary(output_dir: str) -> dict[str, Any]:
    try:
        data = json.loads((Path(output_dir) / DONE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return {k: data[k] for k in _SUMMARY_KEYS if isinstance(data, dict) and k in data}


def build_report(state: RunState, ok: bool) -> dict[str, Any]:
    jobs = {}
    for job_id, job in state.jobs.items():
        jobs[job_id] = {
            "state": job.state, "reason": job.reason, "hash": job.hash, "output_dir": job.output_dir,
            "elapsed_s": round(job.elapsed, 3) if job.elapsed is not None else None,
            **_done_summary(job.output_dir),
        }
    return {"recipe": state.recipe, "plan": state.plan, "executor": state.executor, "ok": ok, "jobs": jobs}


def _short(summary: dict[str, Any]) -> str:
    parts = []
    loss = summary.get("final_loss", summary.get("loss"))
    if isinstance(loss, (int, float)):
        parts.append(f"loss {loss:.4f}")
    for key in ("metrics", "eval"):
        values = summary.get(key)
        if isinstance(values, dict):
            parts += [f"{k} {_headline(v)}" for k, v in sorted(values.items())[:6]]
    return ", ".join(parts)


def _headline(value: Any) -> str:
    """A number as 4 significant digits; an eval dict as its headline: bits-per-byte, reward accuracy, accuracy or
    loss, the first it has."""
    if isinstance(value, dict):
        for key in ("bpb", "reward_accuracy", "accuracy", "loss"):
            if isinstance(value.get(key), (int, float)):
                return f"{key} {value[key]:.4g}"
        return "{...}"
    return f"{value:.4g}" if isinstance(value, (int, float)) else str(value)


def write_report(state: RunState, ok: bool) -> tuple[Path, str]:
    """Write RUN_DIR/report.json; return its path and the printed text."""
    report = build_report(state, ok)
    path = state.path.parent / "report.json"
    write_json_atomically(path, report)
    width = max([len(j) for j in report["jobs"]] + [3])
    lines = []
    for job_id, job in report["jobs"].items():
        detail = _short(job) or job["reason"]
        lines.append(f"{job_id:<{width}}  {job['state']:<9}  {elapsed_text(job['elapsed_s']):>8}  {detail}")
    counts: dict[str, int] = {}
    for job in report["jobs"].values():
        counts[job["state"]] = counts.get(job["state"], 0) + 1
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()) + f"; report: {path}")
    return path, "\n".join(lines)
