"""What runs inside a job's process (submitted through submitit): set the job's environment, become
the leader of a new process group (so the launcher can stop the job and everything it started,
torchrun workers included, with one killpg), then call the plan's entry with the job's config.

Not run by hand; the launcher submits `run_task`. Kept free of submitit and rich imports.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class NotImplementedYet(RuntimeError):
    """The plan names an entry the runtime does not provide."""


def run_task(config_path: str, entry: str, env: dict[str, str]) -> Any:
    """Run one task of a job: env -> os.environ, new process group, entry(job_config)."""
    os.environ.update(env)
    from runtime.cpu_cores import pin_from_env

    pin_from_env()  # before the entry imports torch: its thread pool inherits the job's cores
    try:
        os.setpgrp()
    except OSError:  # already a group leader
        pass
    output_dir = Path(env["RECIPE_OUTPUT_DIR"])
    (output_dir / f".pgid.{env.get('RECIPE_TASK_INDEX', '0')}").write_text(str(os.getpgrp()), encoding="utf-8")
    from runtime.run_job import resolve_entry

    job = json.loads(Path(config_path).read_text(encoding="utf-8"))
    function = resolve_entry(entry)
    if function is None:
        raise NotImplementedYet(f"{job['id']}: not implemented yet: {job['kind']} ({entry})")
    return function(job)
