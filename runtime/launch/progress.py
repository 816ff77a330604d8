"""Progress of a launch: a live rich table on a terminal, plain lines otherwise.

Each row: job, state, elapsed, and the last line of the job's `metrics.jsonl` (step, loss, tokens/s)
when the job writes one. Plain mode prints one line per state change (good for logs and CI).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from runtime.launch.state import RunState


def last_metrics(output_dir: str | Path) -> dict[str, Any] | None:
    """The last complete JSON line of OUTPUT_DIR/metrics.jsonl (reads only the file's tail), or None."""
    path = Path(output_dir) / "metrics.jsonl"
    try:
        with path.open("rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - 8192))
            lines = handle.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        return value if isinstance(value, dict) else None
    return None


def metrics_text(metrics: dict[str, Any] | None) -> str:
    if not metrics:
        return ""
    parts = []
    for key, label, fmt in (("step", "step", "{}"), ("loss", "loss", "{:.4f}"), ("tokens_per_s", "tok/s", "{:,.0f}")):
        value = metrics.get(key, metrics.get("tps") if key == "tokens_per_s" else None)
        if isinstance(value, (int, float)):
            parts.append(f"{label} {fmt.format(value)}")
    return "  ".join(parts)


def elapsed_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


class Progress:
    """Call `update()` whenever something may have changed; `close()` at the end."""

    def __init__(self, state: RunState, stream: TextIO | None = None, live: bool | None = None) -> None:
        self.state = state
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self.seen: dict[str, str] = {}
        self.start = time.time()
        self._live: Any = None
        self._last_draw = 0.0
        if self.live:
            from rich.live import Live

            self._live = Live(self._table(), refresh_per_second=4, transient=False)
            self._live.start()

    def _table(self) -> Any:
        from rich.table import Table

        table = Table(title=f"recipe launch: {self.state.recipe}", expand=False)
        for column in ("job", "state", "elapsed", "progress"):
            table.add_column(column)
        colour = {"running": "cyan", "done": "green", "cached": "dim green", "failed": "red", "cancelled": "yellow"}
        for job in self.state.jobs.values():
            style = colour.get(job.state, "")
            detail = metrics_text(last_metrics(job.output_dir)) if job.state == "running" else job.reason
            table.add_row(job.id, f"[{style}]{job.state}[/]" if style else job.state, elapsed_text(job.elapsed), detail)
        return table

    def update(self) -> None:
        if self._live is not None:
            now = time.time()
            if now - self._last_draw > 0.2:
                self._live.update(self._table())
                self._last_draw = now
            return
        for job in self.state.jobs.values():
            if self.seen.get(job.id) != job.state:
                self.seen[job.id] = job.state
                if job.state == "pending":
                    continue
                reason = f" ({job.reason})" if job.reason else ""
                print(f"[{elapsed_text(time.time() - self.start)}] {job.id}: {job.state}{reason}", file=self.stream, flush=True)

    def close(self) -> None:
        if self._live is not None:
            self._live.update(self._table())
            self._live.stop()
