"""The rollout sidecar job (`runtime.rollout:run_sidecar`, kind rlvr_rollout): serve the policy with vLLM until the
trainer is done.

    python -m runtime.run_job --config build/<name>/jobs/rlvr-rollout/config.json --entry runtime.rollout:run_sidecar

Runs in the trainer's environment and imports no torch: it resolves the model (init `stage`: `$RECIPE_INPUT_<JOB>/hf`;
`path`: a Hugging Face folder relative to the recipe), writes `weights.json` (the model's tensor names, shapes and
dtypes: what every weight push must match; on CPU a tied-embedding model is served from an untied copy in
`<out>/served/`, see `runtime.rollout.weights.untie_for_serving`), starts vLLM's OpenAI server from the job's
inference environment
(`runtime.environments`: `config.environment`, else inference-cpu without GPUs and inference-cuda with them) on
a free port with its log in `<out>/vllm.log`, labels the weights version 0, and publishes `server.json` (see
`runtime.rollout.control` for every file the trainer and the sidecar share).

When the plan's engines span nodes (`rollout.data_parallel_local`), the job runs one task per node: task 0 does
all of the above, and publishes where its engines meet before each start; the others run their node's headless
engines, restarted with each server start, until task 0 is done (`runtime.rollout.engines`).

Then it supervises (a thread touches `heartbeat` every 2 s, also while a server starts):
- the trainer writes `rollout.stop` or its DONE.json -> stop the server, write DONE.json, exit 0;
- the trainer writes `restart.json` {id, weights, version} -> stop the server, start one from those weights,
  label it, publish server.json with `generation` + 1 (the trainer's `SidecarHandle.restart` does this);
- the server dies on its own -> say so in one line and wait up to `restart_wait_s` (default 120) for a restart
  request; none -> exit non-zero with that line;
- SIGTERM/SIGINT (a cancelled job) -> stop the server's whole process group and exit non-zero.
Test: `python -m pytest tests/runtime/test_rollout.py -q`.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Mapping

from runtime.rollout import control
from runtime.rollout.client import RolloutClient, SidecarError
from runtime.rollout.engines import EngineHead
from runtime.rollout.server import ServerFailed, ServerSettings, VllmServer, how_it_ended, start_healthy
from runtime.rollout.weights import read_manifest, untie_for_serving

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
RESTART_WAIT_S = 120.0


class SidecarFailed(RuntimeError):
    """The sidecar cannot serve; the message is the one line the launcher reports."""


class Cancelled(BaseException):
    """SIGTERM or SIGINT arrived."""


def peer_dir(job_id: str, *, needed_by: str) -> Path:
    """The output folder of RL-group member `job_id`, from `RECIPE_PEER_<JOB>`."""
    from runtime.launch.prepare import peer_env_var

    var = peer_env_var(job_id)
    value = os.environ.get(var)
    if not value:
        raise SidecarFailed(f"{needed_by}: {var} is not set: the launcher sets it for the members of an RL group")
    return Path(value)


def _recipe_dir(job: Mapping[str, Any]) -> Path:
    root = Path(job.get("recipe_dir") or ".")
    return root if root.is_absolute() else (Path(os.environ.get("RECIPE_RECIPE_DIR") or Path.cwd()) / root).resolve()


def resolve_model(job: Mapping[str, Any]) -> tuple[Path, Path]:
    """(model folder with config.json and safetensors, folder holding the tokenizer)."""
    from runtime.outputs import input_dir

    config, label = job["config"], job["id"]
    init = config["init"]
    if init["kind"] == "stage":
        model = input_dir(init["job"], needed_by=f"job {label}") / "hf"
    elif init["kind"] == "path":
        model = (_recipe_dir(job) / Path(init["path"]).expanduser()).resolve()
        model = model / "hf" if (model / "hf" / "config.json").is_file() else model
    else:
        raise SidecarFailed(f"{label}: init kind {init['kind']!r}: the sidecar serves an exported checkpoint "
                            "(init from an earlier stage or a local Hugging Face folder)")
    if not (model / "config.json").is_file():
        raise SidecarFailed(f"{label}: no model at {model} (config.json missing)")
    tokenizer = model
    if not all((model / name).is_file() for name in TOKENIZER_FILES) and config.get("tokenizer"):
        tokenizer = (_recipe_dir(job) / Path(config["tokenizer"]).expanduser()).resolve()
    return model, tokenizer


def environment_name(config: Mapping[str, Any]) -> str:
    if config.get("environment"):
        return str(config["environment"])
    return "inference-cpu" if int(config["rollout"].get("gpus", 0)) == 0 else "inference-cuda"


class Supervisor:
    """Keeps one vLLM server up for the trainer (see the module docstring)."""

    def __init__(self, label: str, out: Path, trainer_dir: Path, python: Path, model: Path, tokenizer: Path,
                 settings: ServerSettings, *, restart_wait_s: float = RESTART_WAIT_S):
        self.label, self.out, self.trainer_dir = label, out, trainer_dir
        self.python, self.model, self.tokenizer, self.settings = python, model, tokenizer, settings
        self.engines = EngineHead(out, settings)  # the other nodes' engines, when they span nodes
        self.restart_wait_s = restart_wait_s
        self.server: VllmServer | None = None
        self.generation = 0
        self.starts: list[dict[str, Any]] = []
        self._stopping = threading.Event()
        # a restart request left over from an earlier run of this job is not for us
        self.handled_request = int((control.read_restart(out) or {}).get("id", 0))

    def say(self, line: str) -> None:
        print(f"{self.label}: {line}", flush=True)

    def start(self, weights: Path, version: int) -> None:
        """Start a server from `weights`, label it `version`, publish server.json."""
        server, ready_s = start_healthy(self.python, weights, self.out / "vllm.log",
                                        self.engines.settings_for(weights, self.tokenizer), tokenizer=self.tokenizer)
        self.server = server
        try:
            RolloutClient(server.url).set_weight_version(version)
        except SidecarError as exc:
            server.stop()
            raise SidecarFailed(f"{self.label}: the server started but refused a weight version: {exc}") from None
        self.generation += 1
        info = {"host": server.host, "port": server.port, "url": server.url, "pid": server.pid,
                "supervisor_pid": os.getpid(), "model": str(weights), "tokenizer": str(self.tokenizer),
                "started": server.started_at, "ready_s": round(ready_s, 2), "weight_version": int(version),
                "generation": self.generation, "log": str(server.log_path)}
        control.publish_server(self.out, info)
        self.starts.append({"generation": self.generation, "ready_s": round(ready_s, 2), "weights": str(weights),
                            "version": int(version)})
        self.say(f"vLLM up at {server.url} in {ready_s:.1f} s (weights {weights}, version {version}, "
                 f"generation {self.generation})")

    def handle_restart(self) -> bool:
        request = control.read_restart(self.out)
        if request is None or int(request.get("id", 0)) <= self.handled_request:
            return False
        self.handled_request = int(request["id"])
        weights = Path(request["weights"]) if request.get("weights") else self.model
        self.say(f"restart asked (request {request['id']}): weights {weights}, version {request['version']}")
        if self.server is not None:
            self.server.stop()
        self.start(weights, int(request["version"]))
        return True

    def _beat(self) -> None:
        while not self._stopping.wait(control.HEARTBEAT_S):
            control.beat(self.out)

    def run(self) -> str:
        """Supervise until the trainer is done; returns why it stopped. Raises SidecarFailed or Cancelled."""
        control.beat(self.out)
        threading.Thread(target=self._beat, name="heartbeat", daemon=True).start()  # also while a server starts
        self.start(self.model, 0)
        died_at: float | None = None
        while True:
            reason = control.stop_requested(self.trainer_dir)
            if reason is not None:
                return reason
            if self.handle_restart():
                died_at = None
                continue
            assert self.server is not None
            code = self.server.poll()
            if code is not None and died_at is None:
                died_at = time.time()
                self.say(f"the vLLM server died ({how_it_ended(code)}): {self.server.last_error()}; waiting up to "
                         f"{self.restart_wait_s:.0f} s for the trainer to ask for a restart")
            if died_at is not None and time.time() - died_at > self.restart_wait_s:
                raise SidecarFailed(f"{self.label}: the vLLM server died ({how_it_ended(code or 0)}) and no restart "
                                    f"was asked within {self.restart_wait_s:.0f} s (log: {self.server.log_path})")
            time.sleep(0.2)

    def stop(self) -> None:
        self._stopping.set()
        if self.server is not None:
            self.server.stop()
        self.engines.close()


def _on_signal(signum: int, _frame: Any) -> None:
    raise Cancelled(signal.Signals(signum).name)


def run_sidecar(job: dict[str, Any]) -> None:
    """The rollout job's entry: see the module docstring."""
    from runtime import environments
    from runtime.outputs import atomic_write_json, output_dir, write_done
    from runtime.ranks import run_engine_task, task_rank

    config, label = job["config"], job["id"]
    out = output_dir(job)
    name = environment_name(config)
    settings = ServerSettings.from_job(config, environments.get(name).device)
    if task_rank() > 0:
        run_engine_task(label, out, settings, lambda: environments.ensure(name), task_rank())
        return
    out.mkdir(parents=True, exist_ok=True)
    for stale in (control.SERVER, control.HEARTBEAT):
        (out / stale).unlink(missing_ok=True)
    trainer_dir = peer_dir(config["trainer_job"], needed_by=f"job {label}")
    model, tokenizer = resolve_model(job)
    if settings.device == "cpu" and json.loads((model / "config.json").read_text()).get("tie_word_embeddings"):
        model = untie_for_serving(model, out / "served")  # vLLM CPU keeps a stale tied head after reload_weights
        print(f"{label}: tied embeddings: serving an untied copy ({model})", flush=True)
    atomic_write_json(out / control.MANIFEST, read_manifest(model))
    python = environments.ensure(name)
    print(f"{label}: serving {model} with vLLM from {name} ({python}) for {config['trainer_job']}", flush=True)
    supervisor = Supervisor(label, out, trainer_dir, python, model, tokenizer, settings,
                            restart_wait_s=float(config.get("restart_wait_s", RESTART_WAIT_S)))
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    started = time.time()
    try:
        reason = supervisor.run()
    except ServerFailed as exc:
        raise SidecarFailed(f"{label}: {exc}") from None
    except Cancelled as exc:
        print(f"{label}: cancelled ({exc}); stopping the vLLM server", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    finally:
        supervisor.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        (out / control.SERVER).unlink(missing_ok=True)
    supervisor.say(f"stopping: {reason}")
    write_done(out, {"job": label, "hash": job.get("hash"), "finished": time.time(), "stopped_because": reason,
                     "seconds": round(time.time() - started, 1), "starts": supervisor.starts})


if __name__ == "__main__":  # python -m runtime.rollout.sidecar CONFIG.json
    run_sidecar(json.loads(Path(sys.argv[1]).read_text(encoding="utf-8")))
