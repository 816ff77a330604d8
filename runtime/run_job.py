"""Run one planned job: `python -m runtime.run_job --config JOB_DIR/config.json --entry module:function`.

The job's launch script (compiler/templates/job.sbatch.j2) calls this. It imports the entry the plan
names and calls it with the job's config; an entry the runtime does not provide yet fails at once
with "not implemented yet", never silently.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any, Callable

EXIT_NOT_IMPLEMENTED = 3


def resolve_entry(entry: str) -> Callable[[dict[str, Any]], Any] | None:
    """The function an entry ("package.module:function") names, or None when the runtime lacks it."""
    module_name, _, function_name = entry.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            return None
        raise
    return getattr(module, function_name, None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--entry", required=True)
    args = parser.parse_args(argv)
    from runtime.cpu_cores import pin_from_env

    pin_from_env()  # before the entry imports torch: its thread pool inherits the job's cores
    job = json.loads(args.config.read_text(encoding="utf-8"))
    function = resolve_entry(args.entry)
    if function is None:
        print(f"{job['id']}: not implemented yet: {job['kind']} ({args.entry})", file=sys.stderr)
        return EXIT_NOT_IMPLEMENTED
    function(job)
    return 0


if __name__ == "__main__":
    sys.exit(main())
