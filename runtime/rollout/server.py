"""One vLLM OpenAI-compatible server as a subprocess of the inference environment: start, wait for health, stop.

    from runtime.rollout.server import ServerSettings, VllmServer
    server = VllmServer(python, model_dir, out / "vllm.log", ServerSettings(max_model_len=256, max_num_seqs=64))
    server.start().wait_healthy()        # seconds it took; raises ServerFailed (one line) if it died or timed out
    ...                                  # http://{server.host}:{server.port}
    server.stop()                        # SIGTERM to its process group, SIGKILL after a grace period

The server is `python -m vllm.entrypoints.openai.api_server` (the `vllm` console script fails in the CPU build)
with `VLLM_SERVER_DEV_MODE=1` (pause/resume, collective_rpc, weight versions) and `--enable-scale-out` (the
token-in/token-out route `/inference/v1/generate`, which returns per-token weight-version spans). On CPU it also
gets `VLLM_CPU_KVCACHE_SPACE` (GiB; otherwise it reserves most of RAM) and `--enforce-eager` (faster start).

It runs in its own session (process group), because vLLM's EngineCore survives a SIGKILL of the API server: only a
group kill takes the whole tree down. It gets PR_SET_PDEATHSIG=SIGTERM so that a supervisor killed with SIGKILL (the
local launcher stops a failed RL group that way) still takes the server down with it.

Standard library only: this runs in the trainer's environment, the server in the inference environment.
Test: `python -m pytest tests/runtime/test_rollout.py -q`.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from runtime.cpu_cores import ENV as CORES_ENV, format_cores, parse_cores
from runtime.net import free_port

PR_SET_PDEATHSIG = 1
SERVED_NAME = "policy"
ADDRESS_IN_USE = "address already in use"


class ServerFailed(RuntimeError):
    """The server died or did not become healthy; the message is one line (with the log's path)."""


@dataclass(frozen=True)
class ServerSettings:
    """What the server is started with (from the rollout job's config: `ServerSettings.from_job`)."""

    max_model_len: int
    max_num_seqs: int
    device: str = "cpu"  # "cpu" | "cuda": which flags and environment variables apply
    tensor_parallel: int = 1
    data_parallel: int = 1  # engines of tensor_parallel GPUs behind the one API server (--data-parallel-size)
    # Engines across nodes (runtime/rollout/engines.py): this node's share, and where the head's engines meet.
    data_parallel_local: int = 0  # 0: every engine runs on the API server's node
    data_parallel_address: str | None = None
    data_parallel_rpc_port: int | None = None
    gpu_memory_utilization: float = 0.9
    dtype: str = "auto"
    logprobs_mode: str = "processed_logprobs"
    kv_cache_gib: int = 1  # CPU only: VLLM_CPU_KVCACHE_SPACE
    seed: int = 0
    enforce_eager: bool = True
    # `priority`: requests carry a priority (lower first; runtime.rl.rollouts gives each draw its index plus one), so
    # the batch the trainer needs next is not slowed by the ones generating ahead of it
    scheduling_policy: str = "priority"
    start_timeout_s: float = 300.0
    weight_transfer: str | None = None  # "nccl": vLLM's weight-transfer engine (GPU; runtime/rollout/nccl.py)
    extra_env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_job(cls, config: Mapping[str, Any], device: str) -> ServerSettings:
        rollout, sampling = config["rollout"], config.get("sampling", {})
        return cls(max_model_len=int(rollout["max_model_len"]), max_num_seqs=int(rollout["max_num_seqs"]),
                   device=device, tensor_parallel=int(rollout.get("tensor_parallel", 1)),
                   data_parallel=int(rollout.get("data_parallel", 1)),
                   data_parallel_local=int(rollout.get("data_parallel_local", 0)),
                   gpu_memory_utilization=float(rollout.get("gpu_memory_utilization", 0.9)),
                   dtype=str(config.get("model", {}).get("dtype", "auto")),
                   logprobs_mode=str(sampling.get("logprobs_mode", "processed_logprobs")),
                   seed=int(config.get("seed", 0)), enforce_eager=device == "cpu",
                   weight_transfer="nccl" if rollout.get("weight_sync") == "nccl" else None)

    @property
    def spans_nodes(self) -> bool:
        """Whether some of the engines run on other nodes (headless, runtime/rollout/engines.py)."""
        return 0 < self.data_parallel_local < self.data_parallel


def engine_flags(settings: ServerSettings, tokenizer: str | Path | None) -> list[str]:
    """The flags every process of one served model gets: the API server and headless engines alike."""
    flags = ["--max-model-len", str(settings.max_model_len), "--max-num-seqs", str(settings.max_num_seqs),
             "--dtype", settings.dtype, "--logprobs-mode", settings.logprobs_mode, "--seed", str(settings.seed),
             "--scheduling-policy", settings.scheduling_policy]
    if tokenizer is not None:
        flags += ["--tokenizer", str(tokenizer)]
    if settings.enforce_eager:
        flags.append("--enforce-eager")
    if settings.data_parallel > 1:
        flags += ["--data-parallel-size", str(settings.data_parallel)]
    if settings.spans_nodes:
        if settings.data_parallel_address is None or settings.data_parallel_rpc_port is None:
            raise ValueError("engines across nodes need data_parallel_address and data_parallel_rpc_port "
                             "(runtime.rollout.engines.EngineHead.settings_for sets them)")
        flags += ["--data-parallel-size-local", str(settings.data_parallel_local),
                  "--data-parallel-address", settings.data_parallel_address,
                  "--data-parallel-rpc-port", str(settings.data_parallel_rpc_port)]
    if settings.weight_transfer:
        flags += ["--weight-transfer-config", json.dumps({"backend": settings.weight_transfer})]
    if settings.device != "cpu":
        flags += ["--tensor-parallel-size", str(settings.tensor_parallel),
                  "--gpu-memory-utilization", str(settings.gpu_memory_utilization)]
    return flags


def server_command(python: str | Path, model_dir: str | Path, host: str, port: int, settings: ServerSettings, *,
                   tokenizer: str | Path | None = None) -> list[str]:
    """The API server (on a multi-node job: task 0), with its local engines."""
    return [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
            "--served-model-name", SERVED_NAME, "--host", host, "--port", str(port),
            "--enable-scale-out", "--disable-uvicorn-access-log", *engine_flags(settings, tokenizer)]


# vllm-cpu installs as the distribution "vllm-cpu", and vLLM's CLI looks up the version of "vllm" before it parses
# anything (PackageNotFoundError, checked with 0.32.0). On CPU the CLI runs with that lookup answered as vLLM's own
# platform detection answers it (vllm.platforms.vllm_version_matches_substr): vllm-cpu's version + "+cpu".
_CPU_CLI = ("import importlib.metadata as m, runpy; v = m.version; "
            "m.version = lambda name: v('vllm-cpu') + '+cpu' if name == 'vllm' else v(name); "
            "runpy.run_module('vllm.entrypoints.cli.main', run_name='__main__', alter_sys=True)")


def headless_command(python: str | Path, model_dir: str | Path, settings: ServerSettings, start_rank: int, *,
                     tokenizer: str | Path | None = None) -> list[str]:
    """`data_parallel_local` engines from rank `start_rank` on, serving the API server of another node (no API of
    their own): `vllm serve --headless`, which the API server's module does not offer."""
    if not settings.spans_nodes:
        raise ValueError("headless engines serve a job whose engines span nodes (0 < data_parallel_local < "
                         f"data_parallel; got {settings.data_parallel_local} of {settings.data_parallel})")
    cli = ["-c", _CPU_CLI] if settings.device == "cpu" else ["-m", "vllm.entrypoints.cli.main"]
    return [str(python), *cli, "serve", str(model_dir), "--headless", "--data-parallel-start-rank", str(start_rank),
            *engine_flags(settings, tokenizer)]


def server_env(settings: ServerSettings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The server's environment: the caller's minus the trainer venv's Python paths, offline, dev routes on."""
    env = {k: v for k, v in (os.environ if base is None else base).items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(VLLM_SERVER_DEV_MODE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1",
               VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
    if settings.device == "cpu":
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.kv_cache_gib))
        if env.get(CORES_ENV):  # the job's own cores (runtime/cpu_cores.py): vLLM's threads stay on them
            env.setdefault("VLLM_CPU_OMP_THREADS_BIND", format_cores(parse_cores(env[CORES_ENV])))
    env.update(settings.extra_env)
    return env


def bind_address() -> tuple[str, str]:
    """(address to bind, host name to publish): loopback when run locally; on Slurm every interface, published under
    the node's name, since the trainer may run on another node."""
    if os.environ.get("SLURM_JOB_ID"):
        return "0.0.0.0", socket.getfqdn()
    return "127.0.0.1", "127.0.0.1"


def _die_with_parent() -> None:
    """preexec_fn: SIGTERM this child when the process that started it dies (Linux; a no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def how_it_ended(code: int) -> str:
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit {code}"


class VllmServer:
    """One server process tree (see the module docstring). `start()` returns at once; `wait_healthy()` blocks."""

    def __init__(self, python: str | Path, model_dir: str | Path, log_path: str | Path, settings: ServerSettings, *,
                 tokenizer: str | Path | None = None, bind: str = "127.0.0.1", host: str = "127.0.0.1",
                 port: int | None = None):
        self.python, self.model_dir, self.log_path = Path(python), Path(model_dir), Path(log_path)
        self.settings, self.tokenizer = settings, tokenizer
        self.bind, self.host, self.port = bind, host, port or free_port(bind)
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self._log_start = 0  # where this start's lines begin in the (appended) log

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def start(self, command: list[str] | None = None) -> VllmServer:
        """Start the API server (or `command`: headless engines, runtime/rollout/engines.py) in its own session."""
        if not self.python.is_file():
            raise ServerFailed(f"no inference interpreter at {self.python} (build it: "
                               "python -m runtime.environments ensure inference-cpu)")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        command = command or server_command(self.python, self.model_dir, self.bind, self.port, self.settings,
                                            tokenizer=self.tokenizer)
        with open(self.log_path, "ab") as log:
            self._log_start = log.tell()
            log.write(f"$ {' '.join(command)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=server_env(self.settings), cwd=self.log_path.parent,
                                            start_new_session=True, preexec_fn=_die_with_parent)
        self.started_at = time.time()
        return self

    def poll(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def healthy(self, timeout: float = 2.0) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=timeout) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def wait_healthy(self, timeout: float | None = None) -> float:
        """Block until /health answers 200; returns the seconds since start. Raises ServerFailed (and stops what is
        left of the server) if it exits first or `timeout` (default settings.start_timeout_s) passes."""
        deadline = self.started_at + (timeout if timeout is not None else self.settings.start_timeout_s)
        while True:
            code = self.poll()
            if code is not None:
                self.stop()
                raise ServerFailed(f"the vLLM server exited while starting ({how_it_ended(code)}): "
                                   f"{self.last_error()} (log: {self.log_path})")
            if self.healthy():
                return time.time() - self.started_at
            if time.time() > deadline:
                self.stop()
                raise ServerFailed(f"the vLLM server was not healthy after {deadline - self.started_at:.0f} s "
                                   f"(log: {self.log_path})")
            time.sleep(0.25)

    def _log_text(self) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_start)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def last_error(self) -> str:
        """The last line of this start's log that looks like an error, else its last line."""
        lines = [line.strip() for line in self._log_text().splitlines() if line.strip()]
        for line in reversed(lines[-200:]):
            if "Error" in line or "error:" in line.lower():
                return line[-300:]
        return lines[-1][-300:] if lines else "empty log"

    def address_in_use(self) -> bool:
        return ADDRESS_IN_USE in self._log_text().lower()

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM the whole process group, SIGKILL it after `grace` seconds; returns the server's exit code."""
        if self.process is None:
            return None
        pgid = self.process.pid  # its own session: pgid == pid
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
            try:
                self.process.wait(timeout=wait)
                if not _group_alive(pgid):
                    break
            except subprocess.TimeoutExpired:
                continue
            end = time.time() + wait  # the API server is gone; give its EngineCore the same grace
            while _group_alive(pgid) and time.time() < end:
                time.sleep(0.1)
            if not _group_alive(pgid):
                break
        return self.process.returncode


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def start_healthy(python: str | Path, model_dir: str | Path, log_path: str | Path, settings: ServerSettings, *,
                  tokenizer: str | Path | None = None, attempts: int = 3) -> tuple[VllmServer, float]:
    """Start a server on a free port and wait for it; a port taken between choosing and binding is retried."""
    bind, host = bind_address()
    for attempt in range(attempts):
        server = VllmServer(python, model_dir, log_path, settings, tokenizer=tokenizer, bind=bind, host=host)
        try:
            return server, server.start().wait_healthy()
        except ServerFailed:
            if attempt + 1 < attempts and server.address_in_use():
                continue
            raise
    raise AssertionError("unreachable")
