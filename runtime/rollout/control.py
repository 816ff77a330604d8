"""How the RL trainer and its rollout sidecar find and signal each other: files in their output folders.

The two jobs of an RL group see each other's output folder (`RECIPE_PEER_<JOB>`, set by the launcher). Files:

  in the sidecar's folder (written by the sidecar, atomically):
    server.json    {host, port, url, pid, supervisor_pid, model, started, ready_s, weight_version, generation, log}
                   published once the server is healthy and its version is set; `generation` counts restarts
    weights.json   {name: {"dtype", "shape"}} of the served model's Hugging Face tensors: what a push must match
    heartbeat      touched every few seconds while the sidecar's supervisor runs
  in the sidecar's folder (written by the trainer):
    restart.json   {id, weights, version}: "start a new server from these weights (a folder with config.json)"
  in the trainer's folder (written by the trainer):
    rollout.stop   "done, stop" (also: the trainer's DONE.json)

`SidecarHandle` is the trainer's side: `connect()` waits for server.json and returns a handle whose `client` talks to
the server; `restart(weights, version)` asks the supervisor for a new server and waits for it; `stop()` says done.
Standard library only. Test: `python -m pytest tests/runtime/test_rollout.py -q`.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from runtime.outputs import DONE, atomic_write_json
from runtime.rollout.client import RolloutClient, SidecarUnavailable

SERVER = "server.json"
MANIFEST = "weights.json"
HEARTBEAT = "heartbeat"
RESTART = "restart.json"
STOP = "rollout.stop"
HEARTBEAT_S = 2.0
STALE_S = 20.0  # a heartbeat older than this: the supervisor is gone


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_server(sidecar_dir: Path) -> dict[str, Any] | None:
    return read_json(Path(sidecar_dir) / SERVER)


def publish_server(out: Path, info: dict[str, Any]) -> None:
    atomic_write_json(Path(out) / SERVER, info)


def beat(out: Path) -> None:
    path = Path(out) / HEARTBEAT
    path.write_text(f"{time.time():.3f}\n", encoding="utf-8")


def supervisor_alive(sidecar_dir: Path, stale_s: float = STALE_S) -> bool:
    try:
        return time.time() - (Path(sidecar_dir) / HEARTBEAT).stat().st_mtime < stale_s
    except OSError:
        return False


def request_restart(sidecar_dir: Path, weights: str | Path | None, version: int) -> int:
    """Ask the supervisor for a new server from `weights` (None: the model it started with); returns the request id."""
    previous = read_json(Path(sidecar_dir) / RESTART) or {}
    request_id = int(previous.get("id", 0)) + 1
    atomic_write_json(Path(sidecar_dir) / RESTART, {"id": request_id, "weights": None if weights is None else str(weights),
                                                    "version": int(version), "requested": time.time()})
    return request_id


def read_restart(sidecar_dir: Path) -> dict[str, Any] | None:
    return read_json(Path(sidecar_dir) / RESTART)


def request_stop(trainer_dir: Path, reason: str = "done") -> None:
    atomic_write_json(Path(trainer_dir) / STOP, {"reason": reason, "time": time.time()})


def stop_requested(trainer_dir: Path) -> str | None:
    """Why the sidecar should stop (the trainer said so, or finished), or None."""
    if (Path(trainer_dir) / STOP).is_file():
        return f"the trainer asked ({(read_json(Path(trainer_dir) / STOP) or {}).get('reason', 'stop')})"
    if (Path(trainer_dir) / DONE).is_file():
        return "the trainer finished (DONE.json)"
    return None


def wait_for_server(sidecar_dir: Path, *, timeout: float, newer_than: int = -1,
                    poll: float = 0.25) -> dict[str, Any]:
    """server.json with generation > newer_than, once published; SidecarUnavailable after `timeout` or when the
    supervisor's heartbeat stops (after it had started)."""
    deadline = time.time() + timeout
    while True:
        info = read_server(sidecar_dir)
        if info is not None and int(info.get("generation", 0)) > newer_than:
            return info
        if time.time() > deadline:
            raise SidecarUnavailable(f"no sidecar server published in {sidecar_dir} within {timeout:.0f} s")
        if (Path(sidecar_dir) / HEARTBEAT).exists() and not supervisor_alive(sidecar_dir):
            raise SidecarUnavailable(f"the sidecar's supervisor stopped ({sidecar_dir / HEARTBEAT} is stale)")
        time.sleep(poll)


class SidecarHandle:
    """The trainer's view of its sidecar job: the address, an HTTP client, restarts and the stop signal."""

    def __init__(self, sidecar_dir: Path, info: dict[str, Any], *, trainer_dir: Path | None = None,
                 timeout: float = 30.0, generate_timeout: float = 600.0):
        self.sidecar_dir, self.trainer_dir = Path(sidecar_dir), trainer_dir
        self.timeout, self.generate_timeout = timeout, generate_timeout
        self.info = info
        self.client = RolloutClient(info["url"], timeout=timeout, generate_timeout=generate_timeout)

    @classmethod
    def connect(cls, sidecar_dir: str | Path, *, trainer_dir: str | Path | None = None, wait: float = 600.0,
                **kwargs: Any) -> SidecarHandle:
        """Wait (up to `wait` s) for the sidecar to publish its server, then connect."""
        info = wait_for_server(Path(sidecar_dir), timeout=wait)
        return cls(Path(sidecar_dir), info, trainer_dir=None if trainer_dir is None else Path(trainer_dir), **kwargs)

    @property
    def generation(self) -> int:
        return int(self.info.get("generation", 0))

    def manifest(self) -> dict[str, Any]:
        """The served model's tensor names, shapes and dtypes (weights.json)."""
        manifest = read_json(self.sidecar_dir / MANIFEST)
        if manifest is None:
            raise SidecarUnavailable(f"{self.sidecar_dir / MANIFEST} is missing: the sidecar has not published it")
        return manifest

    def refresh(self) -> bool:
        """Pick up a newer server.json (a restart the supervisor did); True when the address changed."""
        info = read_server(self.sidecar_dir)
        if info is None or int(info.get("generation", 0)) <= self.generation:
            return False
        self.info = info
        self.client = RolloutClient(info["url"], timeout=self.timeout, generate_timeout=self.generate_timeout)
        return True

    def restart(self, weights: str | Path | None, version: int, *, wait: float = 600.0) -> float:
        """Ask the supervisor for a new server from `weights` labelled `version` and wait until it is up; returns the
        seconds it took. SidecarUnavailable when the supervisor is gone or does not deliver in time."""
        if not supervisor_alive(self.sidecar_dir):
            raise SidecarUnavailable(f"cannot restart the sidecar: its supervisor is not running "
                                     f"(no fresh {self.sidecar_dir / HEARTBEAT})")
        start = time.time()
        request_restart(self.sidecar_dir, weights, version)
        info = wait_for_server(self.sidecar_dir, timeout=wait, newer_than=self.generation)
        self.info = info
        self.client = RolloutClient(info["url"], timeout=self.timeout, generate_timeout=self.generate_timeout)
        if int(info.get("weight_version", -1)) != int(version):
            raise SidecarUnavailable(f"the restarted sidecar serves version {info.get('weight_version')}, "
                                     f"not {version}: {info.get('error', 'see its log')}")
        return time.time() - start

    def stop(self, reason: str = "done") -> None:
        """Tell the sidecar the trainer is done (it stops its server and exits)."""
        if self.trainer_dir is None:
            raise ValueError("SidecarHandle.stop: no trainer_dir given to connect()")
        request_stop(self.trainer_dir, reason)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False
