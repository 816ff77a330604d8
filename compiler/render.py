"""Write a compiled plan to disk: plan.json and one folder per job (config.json, job.sbatch), atomically.

Every value a template prints goes through the `q` filter (shlex.quote); recipe text that
could reach a shell is quoted, and the values that go on `#SBATCH` lines are restricted by
the schema to characters that cannot break a line.
"""
from __future__ import annotations

import functools
import json
import os
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jinja2

_TEMPLATES = Path(__file__).resolve().parent / "templates"


@functools.lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["q"] = lambda value: shlex.quote(str(value))
    return env


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


def render_sbatch(plan: dict[str, Any], job: dict[str, Any]) -> str:
    cluster = plan["cluster"]
    return _environment().get_template("job.sbatch.j2").render(
        recipe_name=plan["recipe"]["name"],
        job=job,
        dependencies=job["depends_on"],
        setup=cluster.get("setup", []),
    )


def job_files(plan: dict[str, Any]) -> dict[str, str]:
    """Relative path -> text of every file a compile writes."""
    files = {"plan.json": to_json(plan)}
    for job in plan["jobs"]:
        config = {
            "format_version": plan["format_version"],
            "recipe": plan["recipe"]["name"],
            "recipe_dir": plan["recipe_dir"],
            **{k: job[k] for k in ("id", "stage", "kind", "entry", "hash", "depends_on", "array", "group", "resources", "config")},
        }
        files[f"jobs/{job['id']}/config.json"] = to_json(config)
        files[f"jobs/{job['id']}/job.sbatch"] = render_sbatch(plan, job)
    return files


def write_atomically(target: Path, files: dict[str, str]) -> None:
    """Write all files into a fresh folder beside `target`, then swap it in: never half-written."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for rel, text in files.items():
            path = staging / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            if rel.endswith(".sbatch"):
                path.chmod(0o755)
        staging.chmod(0o755)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
        os.replace(staging, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
