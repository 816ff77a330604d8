"""`recipe diff A B`: what changes between two recipes' plans, job by job (like `terraform plan`).

Both sides compile to plans (A, B: files or `REV:path`, see compiler.git_source); jobs match by id.
Each job is one of

    +  add                  only in B: it runs
    -  remove               only in A
    ~  update               its own config (or entry, kind, array, depends_on) changed: its hash
                            changes, so it reruns
    ~  rerun                only its parents' hashes changed: it reruns on their new checkpoints (or a
                            job of its group reruns: an RL trainer and its rollout sidecar start together)
    ~  none-resources-only  same hash (no rerun) but resources or estimates changed (time_limit, ...)

Unchanged jobs are counted, not listed. Changed fields are flattened dotted paths
(`config.model.n_kv_heads`). Output: text (terraform-like; colour only on a TTY), markdown (for a
pull-request comment) or JSON (`format_version` 1). Everything is ordered as the new plan's jobs,
removed jobs last, so the output is deterministic.

`recipe git-diff` (see `run_git_diff`) is the same diff as a git external diff driver.
"""
from __future__ import annotations

import difflib
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable

from compiler.diagnostics import RecipeError
from compiler.table import GIB, gib, hours, markdown_table, text_table

FORMAT_VERSION = 1
MAX_FIELDS = 12  # changed fields shown per job in text and markdown (JSON lists all)
VALUE_WIDTH = 60  # longer values are cut with '…' in text and markdown
IDENTITY = ("entry", "kind", "array", "depends_on")  # with config: what the job hash covers
SYMBOL = {"add": "+", "remove": "-", "update": "~", "rerun": "~", "none-resources-only": "~"}
COLOUR = {"+": "32", "-": "31", "~": "33"}
_MISSING: Any = type("Missing", (), {"__repr__": lambda self: "(absent)"})()


# ---------------------------------------------------------------- loading


def load_plan(arg: str, sets: Iterable[str] = (), *, origin: str | Path | None = None) -> dict[str, Any]:
    """Compile a recipe file or `REV:path` to its plan."""
    from compiler.build import compile_recipe
    from compiler.git_source import git_source, is_git_spec

    sets = list(sets)
    if origin is None and is_git_spec(arg):
        with git_source(arg) as source:
            plan = compile_recipe(source.path, sets, origin=source.origin).plan
            plan = dict(plan, warnings=[source.rewrite(w) for w in plan.get("warnings", [])])
            return plan
    return compile_recipe(arg, sets, origin=origin).plan


def empty_plan() -> dict[str, Any]:
    """The plan of a missing side (/dev/null in git): no jobs."""
    return {"format_version": 1, "recipe": {}, "cluster": {}, "jobs": [], "totals": {"gpu_hours": 0.0, "max_gpus": 0}, "warnings": []}


# ---------------------------------------------------------------- comparing


def _same(a: Any, b: Any) -> bool:
    """Equal as the plan hash sees it (1 and 1.0 and True differ)."""
    if a is _MISSING or b is _MISSING:
        return a is b
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _path(prefix: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{prefix}[{key}]"
    return f"{prefix}.{key}" if prefix else str(key)


def changed_fields(old: Any, new: Any, prefix: str = "") -> list[dict[str, Any]]:
    """Leaves that differ, as dotted paths (mappings recurse; lists of mappings of one length
    recurse by index; other lists are one value). A side without the field has `_MISSING`."""
    if _same(old, new):
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in new:
            out += changed_fields(old.get(key, _MISSING), new[key], _path(prefix, key))
        for key in old:
            if key not in new:
                out += changed_fields(old[key], _MISSING, _path(prefix, key))
        return out
    if (isinstance(old, list) and isinstance(new, list) and len(old) == len(new)
            and any(isinstance(v, dict) for v in (*old, *new))):
        out = []
        for i, (a, b) in enumerate(zip(old, new)):
            out += changed_fields(a, b, _path(prefix, i))
        return out
    return [{"path": prefix, "old": old, "new": new}]


def _metrics(job: dict[str, Any] | None) -> dict[str, Any] | None:
    if job is None:
        return None
    est = job.get("estimates") or {}
    array = job.get("array") or {}
    return {
        "gpus": job["resources"].get("gpus"),
        "parallel": array.get("parallelism", 1),
        "memory_per_gpu_bytes": est.get("memory_per_gpu_bytes"),
        "gpu_hours": est.get("gpu_hours"),
        "wall_hours": est.get("wall_hours"),
    }


def _job_fields(old: dict[str, Any], new: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(fields the hash covers, other fields: description, group and resources)."""
    own = changed_fields(old.get("config"), new.get("config"), "config")
    for key in IDENTITY:
        own += changed_fields(old.get(key), new.get(key), key)
    other = changed_fields(old.get("description", ""), new.get("description", ""), "description")
    other += changed_fields(old.get("group"), new.get("group"), "group")
    other += changed_fields(old.get("resources"), new.get("resources"), "resources")
    return own, other


def compare_jobs(old: dict[str, Any], new: dict[str, Any], status: dict[str, str], *, force: bool = False) -> dict[str, Any] | None:
    """One matched job's entry, or None when nothing about it changed (unless `force`). `status`:
    change of the jobs compared so far (parents come first in plan order)."""
    own, other = _job_fields(old, new)
    old_m, new_m = _metrics(old), _metrics(new)
    if old["hash"] != new["hash"]:
        if own:
            first = own[0]["path"].split(".")[0].split("[")[0]
            change, reason = "update", f"reruns: {first} changed"
        else:
            parents = [p for p in new.get("depends_on", []) if status.get(p, "add") in ("add", "update", "rerun")]
            change, reason = "rerun", "reruns: parent changed" + (f" ({', '.join(parents)})" if parents else "")
    elif other or not _same(old_m, new_m) or force:
        change, reason = "none-resources-only", "no rerun: same config and hash"
    else:
        return None
    return {"id": new["id"], "stage": new.get("stage"), "change": change, "reruns": change in ("update", "rerun"),
            "reason": reason, "fields": own + other, "old": old_m, "new": new_m}


def compare(old_plan: dict[str, Any], new_plan: dict[str, Any], old_name: str = "a", new_name: str = "b") -> dict[str, Any]:
    """The diff as plain data (the JSON format)."""
    old_jobs = {j["id"]: j for j in old_plan["jobs"]}
    new_ids = {j["id"] for j in new_plan["jobs"]}
    by_id: dict[str, dict[str, Any] | None] = {}
    status: dict[str, str] = {}
    for job in new_plan["jobs"]:
        before = old_jobs.get(job["id"])
        if before is None:
            entry = {"id": job["id"], "stage": job.get("stage"), "change": "add", "reruns": True, "reason": "new job",
                     "fields": [], "old": None, "new": _metrics(job)}
        else:
            entry = compare_jobs(before, job, status)
        by_id[job["id"]] = entry
        status[job["id"]] = "none" if entry is None else entry["change"]
    # Jobs of a group start together (an RL trainer and its rollout sidecar): one reruns, all do.
    rerun_groups: dict[str, list[str]] = {}
    for job in new_plan["jobs"]:
        if job.get("group") and status[job["id"]] in ("add", "update", "rerun"):
            rerun_groups.setdefault(job["group"], []).append(job["id"])
    for job in new_plan["jobs"]:
        starters = rerun_groups.get(job.get("group") or "", [])
        if starters and status[job["id"]] in ("none", "none-resources-only"):
            entry = by_id[job["id"]] or compare_jobs(old_jobs[job["id"]], job, status, force=True)
            assert entry is not None
            entry.update(change="rerun", reruns=True, reason=f"reruns: starts with its group ({', '.join(starters)})")
            by_id[job["id"]] = entry
            status[job["id"]] = "rerun"
    entries = [e for e in by_id.values() if e is not None]
    unchanged = [job_id for job_id, e in by_id.items() if e is None]
    for job in old_plan["jobs"]:
        if job["id"] not in new_ids:
            entries.append({"id": job["id"], "stage": job.get("stage"), "change": "remove", "reruns": False,
                            "reason": "removed", "fields": [], "old": _metrics(job), "new": None})

    counts = {kind: sum(e["change"] == kind for e in entries) for kind in SYMBOL}
    old_t, new_t = old_plan.get("totals", {}), new_plan.get("totals", {})
    old_h, new_h = old_t.get("gpu_hours") or 0.0, new_t.get("gpu_hours") or 0.0
    to_run = [e for e in entries if e["reruns"]]
    summary = {
        "add": counts["add"],
        "change": counts["update"] + counts["rerun"] + counts["none-resources-only"],
        "rerun": counts["update"] + counts["rerun"],
        "remove": counts["remove"],
        "unchanged": len(unchanged),
        "unchanged_jobs": unchanged,
        "gpu_hours": {"old": round(old_h, 4), "new": round(new_h, 4), "delta": round(new_h - old_h, 4)},
        "peak_gpus": {"old": old_t.get("max_gpus", 0), "new": new_t.get("max_gpus", 0)},
        "to_run": {"jobs": len(to_run), "gpu_hours": round(sum(e["new"]["gpu_hours"] or 0.0 for e in to_run), 4),
                   "gpu_hours_unknown_for": [e["id"] for e in to_run if e["new"]["gpu_hours"] is None]},
    }
    return {
        "format_version": FORMAT_VERSION,
        "old": {"source": old_name, "sets": [], "recipe": old_plan.get("recipe", {}).get("name")},
        "new": {"source": new_name, "sets": [], "recipe": new_plan.get("recipe", {}).get("name")},
        "recipe_fields": [] if not (old_plan["jobs"] and new_plan["jobs"]) else  # an empty side: every job says it
        changed_fields(old_plan.get("recipe"), new_plan.get("recipe"), "recipe")
        + changed_fields(old_plan.get("cluster"), new_plan.get("cluster"), "cluster"),
        "jobs": entries,
        "stages": _stage_hours(old_plan, new_plan, entries),
        "summary": summary,
    }


def _stage_hours(old_plan: dict[str, Any], new_plan: dict[str, Any], entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """GPU-hours per stage, for the stages with a listed job (unknown estimates count as 0)."""
    touched = {e["stage"] for e in entries}
    order: list[str] = []
    sums: dict[str, list[float]] = {}
    for side, plan in enumerate((new_plan, old_plan)):
        for job in plan["jobs"]:
            stage = job.get("stage")
            if stage not in sums:
                order.append(stage)
                sums[stage] = [0.0, 0.0]
            sums[stage][1 - side] += job["estimates"].get("gpu_hours") or 0.0
    return [{"stage": s, "old": round(sums[s][0], 4), "new": round(sums[s][1], 4), "delta": round(sums[s][1] - sums[s][0], 4)}
            for s in order if s in touched]


# ---------------------------------------------------------------- units


def show(value: Any, width: int = VALUE_WIDTH) -> str:
    """A value compactly: JSON-like (strings quoted, lists inline), cut at `width`."""
    if value is _MISSING:
        return "(absent)"
    text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    return text if len(text) <= width else text[: width - 1] + "…"


def _hours(value: float | None) -> str:
    return "0" if value == 0 else hours(value)


def _wall(value: float | None) -> str:
    return "?" if value is None else f"{value:,.1f}"


def _hours_delta(old: float, new: float) -> str:
    """new - old as the two are shown (so 183,171 → 210,020 says +26,849)."""
    top = max(abs(old), abs(new))
    places = 0 if top >= 100 else 2 if top >= 0.01 else None
    delta = new - old if places is None else round(round(new, places) - round(old, places), places or 0)
    if delta == 0:
        return "±0"
    if places is None:
        return ("+" if delta > 0 else "-") + hours(abs(delta))
    return f"{delta:+,.0f}" if places == 0 else f"{delta:+.2f}"


def _one_place_delta(old: float, new: float) -> str:
    delta = round(round(new, 1) - round(old, 1), 1)
    return "±0" if delta == 0 else f"{delta:+,.1f}"


def _gib_delta(old: float, new: float) -> str:
    return _one_place_delta(old / GIB, new / GIB)


def _pair(old: Any, new: Any, fmt: Any, delta: Any = None, unit: str = "") -> str:
    """'a → b unit (+d)', or 'b unit' when equal (as shown); one side for added/removed jobs."""
    if unit and "?" not in (fmt(new) if new is not _MISSING else fmt(old)):
        unit = f" {unit}"
    else:
        unit = ""
    if old is _MISSING:
        return f"{fmt(new)}{unit}"
    if new is _MISSING:
        return f"{fmt(old)}{unit}"
    if fmt(old) == fmt(new):
        return f"{fmt(new)}{unit}"
    if delta is None or old is None or new is None:
        return f"{fmt(old)} → {fmt(new)}{unit}"
    return f"{fmt(old)} → {fmt(new)}{unit} ({delta(old, new)})"


def _side(entry: dict[str, Any], side: str, key: str) -> Any:
    metrics = entry[side]
    return _MISSING if metrics is None else metrics.get(key)


def _gpus(m: dict[str, Any] | None) -> Any:
    if m is None:
        return _MISSING
    return (m["gpus"], m["parallel"])


def _fmt_gpus(value: tuple[int, int]) -> str:
    gpus, parallel = value
    return f"{gpus}" + (f" ×{parallel}" if parallel and parallel > 1 else "")


def _gpu_hours_delta(entry: dict[str, Any]) -> str:
    old = _side(entry, "old", "gpu_hours")
    new = _side(entry, "new", "gpu_hours")
    if old is None or new is None:
        return "?"
    return _hours_delta(0.0 if old is _MISSING else old, 0.0 if new is _MISSING else new)


def metrics_parts(entry: dict[str, Any], *, with_gpu_hours: bool = True) -> list[str]:
    """['GPUs 56', 'memory/GPU 26.5 → 71.1 GiB (+44.6)', 'GPU-h 3,517 → 8,391 (+4,874)', ...]."""
    parts = [f"GPUs {_pair(_gpus(entry['old']), _gpus(entry['new']), _fmt_gpus)}"]
    parts.append("memory/GPU " + _pair(_side(entry, "old", "memory_per_gpu_bytes"), _side(entry, "new", "memory_per_gpu_bytes"),
                                         gib, _gib_delta, "GiB"))
    if with_gpu_hours:
        old, new = _side(entry, "old", "gpu_hours"), _side(entry, "new", "gpu_hours")
        text = "GPU-h " + _pair(old, new, _hours, _hours_delta)
        if (old is _MISSING or new is _MISSING) and (old or new):
            text += f" ({_gpu_hours_delta(entry)})"
        parts.append(text)
    old_w, new_w = _side(entry, "old", "wall_hours"), _side(entry, "new", "wall_hours")
    if old_w is not _MISSING and new_w is not _MISSING and _wall(old_w) != _wall(new_w):
        parts.append("wall " + _pair(old_w, new_w, _wall, _one_place_delta, "h"))
    return parts


def summary_line(data: dict[str, Any]) -> str:
    s = data["summary"]
    h, p = s["gpu_hours"], s["peak_gpus"]
    return (f"Plan: {s['add']} to add, {s['change']} to change ({s['rerun']} rerun), {s['remove']} to remove, "
            f"{s['unchanged']} unchanged. GPU-hours {_hours(h['old'])} → {_hours(h['new'])} ({_hours_delta(h['old'], h['new'])}); "
            f"peak GPUs {p['old']} → {p['new']}.")


def to_run_line(data: dict[str, Any]) -> str:
    run = data["summary"]["to_run"]
    unknown = f" (+ unknown for {', '.join(run['gpu_hours_unknown_for'])})" if run["gpu_hours_unknown_for"] else ""
    jobs = "job" if run["jobs"] == 1 else "jobs"
    return f"To run (new jobs and reruns): {run['jobs']} {jobs}, {_hours(run['gpu_hours'])} GPU-h{unknown}."


def _stage_rows(data: dict[str, Any]) -> list[list[str]]:
    return [[s["stage"], _hours(s["old"]), _hours(s["new"]), _hours_delta(s["old"], s["new"])] for s in data["stages"]]


def _field_lines(fields: list[dict[str, Any]], limit: int = MAX_FIELDS) -> tuple[list[tuple[str, str, str]], int]:
    shown = [(f["path"], show(f["old"]), show(f["new"])) for f in fields[:limit]]
    return shown, max(0, len(fields) - limit)


# ---------------------------------------------------------------- text


def _sets_lines(data: dict[str, Any]) -> list[str]:
    """'old: --set a=1' lines for the sides compiled with overrides."""
    return [f"{side}: " + " ".join(f"--set {s}" for s in data[side]["sets"]) for side in ("old", "new") if data[side]["sets"]]


def render_text(data: dict[str, Any], *, color: bool = False) -> str:
    def paint(symbol: str, text: str) -> str:
        return f"\033[{COLOUR[symbol]}m{text}\033[0m" if color else text

    lines = [f"recipe diff {data['old']['source']} {data['new']['source']}"]
    lines += [f"  {line}" for line in _sets_lines(data)]
    lines += [f"  {note}" for note in data.get("notes", [])]
    for path, old, new in _field_lines(data["recipe_fields"], limit=10**6)[0]:
        lines.append(f"  {path}: {old} → {new}")
    jobs = data["jobs"]
    if jobs:
        lines += ["", "Jobs, matched by id: + add, - remove, ~ change (reruns when its config, a parent or its group changed).", ""]
        width = max(len(e["id"]) for e in jobs)
        for entry in jobs:
            symbol = SYMBOL[entry["change"]]
            lines.append(paint(symbol, f"  {symbol} {entry['id'].ljust(width)}  {entry['reason']}"))
            shown, more = _field_lines(entry["fields"])
            for path, old, new in shown:
                lines.append(f"      {path}: {old} → {new}")
            if more:
                lines.append(f"      … and {more} more")
            lines.append("      " + ", ".join(metrics_parts(entry)))
            lines.append("")
        if data["stages"]:
            lines.append("GPU-hours by stage:")
            table = text_table(["stage", "old", "new", "delta"], _stage_rows(data), right=(1, 2, 3))
            lines += ["  " + row for row in table.splitlines()]
            lines.append("")
    else:
        lines += ["", "No changes: the plans' jobs are identical.", ""]
    lines.append(summary_line(data))
    if data["summary"]["to_run"]["jobs"]:
        lines.append(to_run_line(data))
    return "\n".join(lines)


# ---------------------------------------------------------------- markdown


def _code(text: str) -> str:
    fence = "``" if "`" in text else "`"
    pad = " " if fence == "``" else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def render_markdown(data: dict[str, Any]) -> str:
    out = [f"### recipe diff {_code(data['old']['source'])} → {_code(data['new']['source'])}", ""]
    sets = _sets_lines(data)
    if sets:
        out += [" ".join(_code(line) for line in sets), ""]
    out.append(f"**{summary_line(data)}**")
    if data["summary"]["to_run"]["jobs"]:
        out += ["", to_run_line(data)]
    jobs = data["jobs"]
    if not jobs:
        out += ["", "No changes: the plans' jobs are identical."]
    else:
        rows = []
        for e in jobs:
            parts = metrics_parts(e, with_gpu_hours=False)
            gpus = parts[0].removeprefix("GPUs ")
            memory = parts[1].removeprefix("memory/GPU ").removesuffix(" GiB").replace(" GiB (", " (")
            gpu_h = _pair(_side(e, "old", "gpu_hours"), _side(e, "new", "gpu_hours"), _hours)
            rerun = "yes" if e["reruns"] else "no"
            why = {"update": "config changed" if e["fields"] and e["fields"][0]["path"].startswith("config") else e["reason"].removeprefix("reruns: "),
                   "rerun": "parent changed", "add": "new job", "remove": "removed", "none-resources-only": "same hash"}[e["change"]]
            rows.append([_code(SYMBOL[e["change"]]), e["id"], f"{rerun} ({why})", gpus, memory, gpu_h, _gpu_hours_delta(e)])
        out += ["", markdown_table(["", "job", "rerun?", "GPUs", "memory/GPU (GiB)", "GPU-h", "Δ GPU-h"], rows, right=(3, 4, 5, 6))]
        if data["stages"]:
            out += ["", "<details><summary>GPU-hours by stage</summary>", "",
                    markdown_table(["stage", "old", "new", "Δ"], _stage_rows(data), right=(1, 2, 3)), "", "</details>"]
    detailed = [e for e in jobs if e["fields"]]
    if detailed or data["recipe_fields"]:
        out += ["", f"<details><summary>Changed fields ({len(detailed)} {'job' if len(detailed) == 1 else 'jobs'})</summary>", ""]
        if data["recipe_fields"]:
            out += ["**recipe**", ""]
            out += [f"- {_code(p)}: {_code(a)} → {_code(b)}" for p, a, b in _field_lines(data["recipe_fields"], limit=10**6)[0]]
            out.append("")
        for e in detailed:
            out += [f"**{_code(SYMBOL[e['change']] + ' ' + e['id'])}** ({e['reason']})", ""]
            shown, more = _field_lines(e["fields"])
            out += [f"- {_code(p)}: {_code(a)} → {_code(b)}" for p, a, b in shown]
            if more:
                out.append(f"- … and {more} more")
            out.append("")
        out.append("</details>")
    return "\n".join(out)


# ---------------------------------------------------------------- JSON


def _jsonable(value: Any) -> Any:
    if value is _MISSING:
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def render_json(data: dict[str, Any]) -> str:
    """Fields missing on one side have null there (as do added/removed jobs' old/new)."""
    return json.dumps(_jsonable(data), indent=2, ensure_ascii=False)


# ---------------------------------------------------------------- entry points


def render(data: dict[str, Any], fmt: str, *, color: bool = False) -> str:
    if fmt == "json":
        return render_json(data)
    if fmt == "markdown":
        return render_markdown(data)
    return render_text(data, color=color)


def _use_colour() -> bool:
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def run_diff(old: str, new: str, fmt: str = "text", sets: Iterable[str] = (), *, old_sets: Iterable[str] = (),
             new_sets: Iterable[str] = (), color: bool | None = None) -> str:
    """`recipe diff OLD NEW`: compile both (files or REV:path) and render. `sets` apply to both
    sides, then `old_sets` to OLD only and `new_sets` to NEW only (what-if: `--set-new stages.sft.lr=2e-4`)."""
    sets, old_sets, new_sets = list(sets), list(old_sets), list(new_sets)
    data = compare(load_plan(old, sets + old_sets), load_plan(new, sets + new_sets), old, new)
    data["old"]["sets"], data["new"]["sets"] = sets + old_sets, sets + new_sets
    return render(data, fmt, color=_use_colour() if color is None else color)


DEV_NULL = "/dev/null"


def run_git_diff(path: str, old_file: str, new_file: str, *, new_path: str | None = None, color: bool | None = None) -> str:
    """`recipe git-diff` for git's external diff driver: OLD_FILE and NEW_FILE are git's temporary
    copies (or the working-tree file, or /dev/null for an added/removed file); both compile with
    origin PATH, so `extends` resolves against the working tree. A side that does not compile (a
    partial base file, a broken edit) falls back to the errors and a plain unified diff: git stops
    at a driver that fails, so this never raises RecipeError."""
    new_path = new_path or path
    header = f"recipe diff a/{path} b/{new_path}"
    colour = _use_colour() if color is None else color
    try:
        old_plan = empty_plan() if old_file == DEV_NULL else load_plan(old_file, origin=path)
        new_plan = empty_plan() if new_file == DEV_NULL else load_plan(new_file, origin=new_path)
    except RecipeError as exc:
        return _fallback(header, path, new_path, old_file, new_file, exc)
    data = compare(old_plan, new_plan, f"a/{path}", f"b/{new_path}")
    if old_file == DEV_NULL:
        data["notes"] = ["new file: every job is added"]
    elif new_file == DEV_NULL:
        data["notes"] = ["deleted file: every job is removed"]
    elif new_path != path:
        data["notes"] = [f"renamed from {path}"]
    return render_text(data, color=colour) + "\n"


def _fallback(header: str, path: str, new_path: str, old_file: str, new_file: str, exc: RecipeError) -> str:
    def read(name: str) -> list[str]:
        if name == DEV_NULL:
            return []
        try:
            return Path(name).read_text(encoding="utf-8").splitlines(keepends=True)
        except (OSError, UnicodeDecodeError):
            return []

    lines = [header, "recipe: cannot compile both sides, showing a plain diff:"]
    lines += [f"  {d}" for d in exc.diagnostics]
    body = "".join(difflib.unified_diff(read(old_file), read(new_file), f"a/{path}", f"b/{new_path}"))
    return "\n".join(lines) + "\n" + body.rstrip("\n") + "\n"


__all__ = ["compare", "run_diff", "run_git_diff", "render", "load_plan", "changed_fields"]
