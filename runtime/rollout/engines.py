"""Data-parallel vLLM engines across a serving job's nodes: the first task's API server, headless engines on the rest.

A serving job (the RL sidecar, a distillation or delta-pair generation job) that spans N nodes runs one task per
node, and its plan gives `data_parallel` engines in all, `data_parallel_local` per node. Task 0 runs the API server
with its local engines (`runtime.rollout.server.server_command`); task k > 0 runs `vllm serve --headless` with
its engines from rank k * data_parallel_local on (`headless_command`). Those connect to the head's data-parallel
RPC port, and the API server spreads requests over every engine. The trainer's protocol does not change:
`collective_rpc` (weight reloads) and pause/resume reach every engine through the API server.

The tasks meet through files in the job's output folder (a shared filesystem on a cluster, as for server.json):

- `engines.json` {generation, model, tokenizer, address, rpc_port}: written by task 0 (`EngineHead.settings_for`)
  before each start of its server (the first, a sidecar restart from new weights, the next model of a generation
  job); a worker (re)starts its engines for every new generation.
- `engines.beat`: rewritten by task 0 every BEAT_S seconds while it runs. A worker that sees it unchanged for
  `gone_after_s` of its own clock (no clock is compared across nodes) stops its engines and fails.
- `engines.stop`: written by task 0 when it is done, for whatever reason; the workers stop their engines and exit 0.

On one node (`data_parallel_local` 0 or equal to `data_parallel`) none of this runs: the API server starts every
engine itself.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from runtime.outputs import atomic_write_json
from runtime.rollout.server import ServerSettings, VllmServer, bind_address, headless_command, how_it_ended

ENGINES = "engines.json"
BEAT = "engines.beat"
STOP = "engines.stop"
BEAT_S = 5.0
GONE_AFTER_S = 120.0
POLL_S = 0.5


class EnginesFailed(RuntimeError):
    """A worker's engines cannot go on; the message is the one line the launcher reports."""


class EngineHead:
    """Task 0's side: publish where the engines meet before each server start, beat while alive, say when done."""

    def __init__(self, out: Path, settings: ServerSettings) -> None:
        self.out, self.settings = Path(out), settings
        self.generation = 0
        self._done = threading.Event()
        self._beater: threading.Thread | None = None
        if settings.spans_nodes:
            for name in (ENGINES, BEAT, STOP):  # an earlier run's files are not for this one
                (self.out / name).unlink(missing_ok=True)

    def settings_for(self, model: str | Path, tokenizer: str | Path | None) -> ServerSettings:
        """The settings of the next server start; writes `engines.json` for the workers when engines span nodes."""
        if not self.settings.spans_nodes:
            return self.settings
        from runtime.net import free_port

        bind, host = bind_address()
        settings = replace(self.settings, data_parallel_address=host, data_parallel_rpc_port=free_port(bind))
        self.generation += 1
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.out / ENGINES, {"generation": self.generation, "model": str(model),
                                               "tokenizer": None if tokenizer is None else str(tokenizer),
                                               "address": host, "rpc_port": settings.data_parallel_rpc_port})
        self._start_beating()
        return settings

    def _start_beating(self) -> None:
        if self._beater is None:
            self._beater = threading.Thread(target=self._beat, name="engines-beat", daemon=True)
            self._beater.start()

    def _beat(self) -> None:
        count = 0
        while True:
            count += 1
            (self.out / BEAT).write_text(str(count), encoding="utf-8")
            if self._done.wait(BEAT_S):
                return

    def close(self) -> None:
        """Tell the workers the job is done (idempotent)."""
        self._done.set()
        if self.settings.spans_nodes:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / STOP).write_text("done\n", encoding="utf-8")

    def __enter__(self) -> EngineHead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_engines(out: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out / ENGINES).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_beat(out: Path) -> str | None:
    try:
        return (out / BEAT).read_text(encoding="utf-8")
    except OSError:
        return None


def run_engine_worker(out: Path, python: str | Path, settings: ServerSettings, rank: int, *,
                      log: Callable[[str], object] = print, gone_after_s: float = GONE_AFTER_S,
                      poll_s: float = POLL_S) -> int:
    """Task `rank`'s side: run this node's headless engines for each generation task 0 publishes, until it says
    stop. Returns how many generations it served; raises EnginesFailed when task 0 stops beating."""
    out = Path(out)
    first = rank * settings.data_parallel_local
    engines: VllmServer | None = None
    generation, served, reported = 0, 0, False
    last_beat, beat_changed = _read_beat(out), time.monotonic()
    try:
        while not (out / STOP).exists():
            beat = _read_beat(out)
            if beat != last_beat:
                last_beat, beat_changed = beat, time.monotonic()
            elif time.monotonic() - beat_changed > gone_after_s:
                raise EnginesFailed(f"task {rank}: task 0 stopped beating ({out / BEAT} unchanged for "
                                    f"{gone_after_s:.0f} s); stopping this node's vLLM engines")
            info = _read_engines(out)
            if info is not None and int(info["generation"]) != generation:
                generation, reported = int(info["generation"]), False
                if engines is not None:
                    engines.stop()
                node = replace(settings, data_parallel_address=str(info["address"]),
                               data_parallel_rpc_port=int(info["rpc_port"]))
                tokenizer = info.get("tokenizer")
                engines = VllmServer(python, info["model"], out / f"vllm-engines-{rank}.log", node, tokenizer=tokenizer)
                engines.start(command=headless_command(python, info["model"], node, first, tokenizer=tokenizer))
                served += 1
                log(f"task {rank}: engines {first}..{first + settings.data_parallel_local - 1} of "
                    f"{settings.data_parallel} started for generation {generation} (head {info['address']}:"
                    f"{info['rpc_port']}, model {info['model']})")
            elif engines is not None and (code := engines.poll()) is not None and not reported:
                reported = True
                log(f"task {rank}: this node's engines ended ({how_it_ended(code)}); waiting for task 0 to start "
                    "the next generation")
            time.sleep(poll_s)
    finally:
        if engines is not None:
            engines.stop()
    return served
