"""Finished prompts on disk, so that a generation job that dies (endpoint down, job preempted) resumes where it was.

One JSON line per finished prompt, `{"index": i, "replies": [...]}`, written (flushed to the OS) as each prompt
finishes, so a killed job loses nothing it finished; fsynced at most once a second (and on close), so a machine
crash loses at most that second, without an fsync per prompt slowing the workers down. A prompt is either wholly
in the file or not at all. On open, the lines already there are read back (a last line
cut off by a crash is ignored and overwritten) and those prompts are not asked again: nothing is lost or duplicated.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any


FSYNC_EVERY_S = 1.0


class ResultStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.results: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()
        good_bytes = 0
        if self.path.is_file():
            with open(self.path, "rb") as f:
                for raw in f:
                    try:
                        record = json.loads(raw)
                    except ValueError:
                        break  # a torn last line: everything from here is rewritten
                    if not raw.endswith(b"\n"):
                        break
                    self.results[int(record["index"])] = record
                    good_bytes += len(raw)
            with open(self.path, "r+b") as f:
                f.truncate(good_bytes)
        self.resumed = len(self.results)
        self._file = open(self.path, "ab")
        self._synced = time.monotonic()

    def done(self, index: int) -> bool:
        return index in self.results

    def add(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            if int(record["index"]) in self.results:
                raise ValueError(f"{self.path}: prompt {record['index']} is already stored")
            self._file.write(line)
            self._file.flush()
            if time.monotonic() - self._synced >= FSYNC_EVERY_S:
                os.fsync(self._file.fileno())
                self._synced = time.monotonic()
            self.results[int(record["index"])] = record

    def close(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()
