"""A generator of a generation job as a ChatClient: an external endpoint as is, or a model this job serves itself
with vLLM (from the inference environment) for as long as the `with` block runs.

    with generator(job, "teacher", out, log=print) as (client, info):
        client.complete(...)

A served model is an earlier stage's export (`$RECIPE_INPUT_<JOB>/hf`), a local folder (relative to the recipe)
or a Hugging Face id (fetched by vLLM; clusters only). The tokenizer is the model's own when its folder has one,
else the recipe's (`config.tokenizer`).
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

from runtime.generate.client import ChatClient

if TYPE_CHECKING:
    from runtime.rollout.engines import EngineHead
    from runtime.rollout.server import ServerSettings

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def served_model(job: Mapping[str, Any], ref: Mapping[str, Any]) -> tuple[str, str | None]:
    """(what vLLM loads, tokenizer folder or None for the model's own) of a model reference."""
    from runtime.lm_data import resolve_path
    from runtime.outputs import input_dir

    if ref["kind"] == "stage":
        model = input_dir(ref["job"], needed_by=f"job {job['id']}") / "hf"
    elif ref["kind"] == "path":
        model = Path(resolve_path(job, ref["path"]))
        model = model / "hf" if (model / "hf" / "config.json").is_file() else model
    elif ref["kind"] == "hf":
        return str(ref["id"]), None
    else:
        raise ValueError(f"job {job['id']}: cannot serve a model reference of kind {ref['kind']!r}")
    if not (model / "config.json").is_file():
        raise FileNotFoundError(f"job {job['id']}: no model at {model} (config.json missing)")
    tokenizer = None
    if not all((model / name).is_file() for name in TOKENIZER_FILES) and job["config"].get("tokenizer"):
        tokenizer = resolve_path(job, job["config"]["tokenizer"])
    return str(model), tokenizer


def server_settings(job: Mapping[str, Any]) -> ServerSettings:
    """How this generation job's vLLM servers (and, across nodes, their engines) are started."""
    from runtime import environments
    from runtime.rollout.server import ServerSettings

    config = job["config"]
    block, serve = config.get("distill") or config.get("delta") or {}, config["serve"]
    device = environments.get(serve["environment"]).device
    return ServerSettings(max_model_len=int(serve["max_model_len"]), max_num_seqs=int(block.get("max_num_seqs", 256)),
                          device=device, tensor_parallel=int(block.get("tensor_parallel", 1)),
                          data_parallel=int(serve.get("data_parallel", 1)),
                          data_parallel_local=int(serve.get("data_parallel_local", 0)),
                          seed=int(block.get("seed", 0)), enforce_eager=device == "cpu")


def run_serving_job(job: dict[str, Any], run: Callable[[dict[str, Any], EngineHead], None]) -> None:
    """A generation job's task: task 0 runs `run(job, engines)`; on a job whose engines span nodes, the others run
    their node's engines until it is done (runtime/rollout/engines.py)."""
    from runtime import environments
    from runtime.outputs import output_dir
    from runtime.ranks import run_engine_task, task_rank
    from runtime.rollout.engines import EngineHead

    settings, out = server_settings(job), output_dir(job)
    if task_rank() > 0:
        environment = job["config"]["serve"]["environment"]
        run_engine_task(job["id"], out, settings, lambda: environments.ensure(environment), task_rank())
        return
    with EngineHead(out, settings) as engines:
        run(job, engines)


@contextlib.contextmanager
def generator(job: Mapping[str, Any], role: str, out: Path, *, log: Callable[[str], object] = print,
              engines: EngineHead | None = None) -> Iterator[tuple[ChatClient, dict[str, Any]]]:
    config = job["config"]
    ref = config["models"][role]
    block = config.get("distill") or config.get("delta") or {}
    timeouts = {"timeout": float(block.get("request_timeout", 600.0)), "retries": int(block.get("retries", 5))}
    if ref["kind"] == "endpoint":
        yield ChatClient.for_endpoint(ref, **timeouts), {"kind": "endpoint", "url": ref["url"], "model": ref["model"]}
        return
    from runtime import environments
    from runtime.rollout.server import SERVED_NAME, start_healthy

    model, tokenizer = served_model(job, ref)
    python = environments.ensure(config["serve"]["environment"], log=log)
    settings = server_settings(job) if engines is None else engines.settings_for(model, tokenizer)
    started = time.time()
    server, _ = start_healthy(python, model, out / f"vllm-{role}.log", settings, tokenizer=tokenizer)
    log(f"{job['id']}: serving {role} {model} with vLLM at {server.url} ({time.time() - started:.1f} s to start)")
    try:
        yield ChatClient(server.url, SERVED_NAME, **timeouts), {"kind": ref["kind"], "model": model,
                                                                "start_s": round(time.time() - started, 1)}
    finally:
        server.stop()
