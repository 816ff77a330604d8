"""Where a job's outputs go, and how they are written: output dirs, atomic writes, the DONE marker, metrics.jsonl.

- `output_dir(job)`: `$RECIPE_OUTPUT_DIR`, else `runs/<recipe>/<id>-<hash[:12]>/` under the current directory.
- `input_dir(job_id)`: a producer job's output dir, from `$RECIPE_INPUT_<JOBID>` (upper case, `-` and `.` as `_`);
  a clear `MissingInputError` when it is not set or not there.
- `atomic_write_json(path, data)`: temp file in the same folder + fsync + `os.replace` (readers never see half a file).
- `write_done(out, data)` / `read_done(out)`: the completion marker `DONE.json`, written last, only on success.
- `MetricsWriter(path)`: appends one JSON object per line to metrics.jsonl, flushed at every write; after a
  restart lines continue from the resumed step (`read_metrics` skips a line a kill cut short).

Test: `python -m pytest tests/runtime/test_train.py -q -k done`. Standard library only.
"""
from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Mapping

DONE = "DONE.json"
METRICS = "metrics.jsonl"


class MissingInputError(RuntimeError):
    """A job needs another job's outputs and cannot find them."""


def input_env_var(job_id: str) -> str:
    """`RECIPE_INPUT_<JOBID>`: the env var naming job `job_id`'s output dir (`mix-solve` -> RECIPE_INPUT_MIX_SOLVE)."""
    return "RECIPE_INPUT_" + re.sub(r"[^A-Za-z0-9]", "_", job_id).upper()


def output_name(job_id: str, job_hash: str) -> str:
    """A job's output folder name: its id plus a short content hash (a changed job gets a new folder)."""
    return f"{job_id}-{job_hash[:12]}"


def output_dir(job: Mapping[str, Any]) -> Path:
    """This job's output folder (not created)."""
    env = os.environ.get("RECIPE_OUTPUT_DIR")
    if env:
        return Path(env).resolve()
    return (Path.cwd() / "runs" / job.get("recipe", "recipe") / output_name(job["id"], job["hash"])).resolve()


def input_dir(job_id: str, *, needed_by: str = "") -> Path:
    """The output folder of producer job `job_id`, from its env var; fails clearly when absent."""
    var = input_env_var(job_id)
    value = os.environ.get(var)
    who = f"{needed_by}: " if needed_by else ""
    if not value:
        raise MissingInputError(f"{who}needs the outputs of job {job_id!r}: set {var} to its output folder "
                                f"(recipe launch sets it when {job_id} has run)")
    path = Path(value)
    if not path.is_dir():
        raise MissingInputError(f"{who}{var}={value} is not a folder (job {job_id!r} has not run?)")
    return path


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _clean(value: Any) -> Any:
    """NaN/inf become None: JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to a temporary file beside `path`, fsync it, then rename it over `path`: readers see the old
    file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(_clean(data), indent=2, sort_keys=True, default=_json_default) + "\n")


def write_done(out: str | Path, data: Mapping[str, Any]) -> Path:
    """Write `DONE.json` atomically: call it last, after every other output is complete."""
    return atomic_write_json(Path(out) / DONE, dict(data))


def read_done(out: str | Path) -> dict[str, Any] | None:
    path = Path(out) / DONE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


class MetricsWriter:
    """Append-only metrics.jsonl: `write({"step": 3, "loss": 2.1, ...})` writes one line and flushes it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        cut_short = self.path.is_file() and self.path.stat().st_size > 0 and not self.path.read_bytes().endswith(b"\n")
        self._file = open(self.path, "a", encoding="utf-8")
        if cut_short:  # the last writer was killed mid-line: start on a fresh line
            self._file.write("\n")

    def write(self, record: Mapping[str, Any]) -> None:
        self._file.write(json.dumps(_clean(dict(record)), sort_keys=True, default=_json_default) + "\n")
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl; a line cut short (a process killed mid-write) is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
