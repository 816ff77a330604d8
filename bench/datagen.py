"""Data-generation throughput: generated tokens/s through our distill job (runtime/generate: its own vLLM server,
the OpenAI chat route, concurrent requests, every finished prompt fsynced to the resume store) against vLLM's
Python API (`vllm.LLM.chat`, in-process, no server) on the same prompts, model and sampling, in the same run.

    python bench/datagen.py [--prompts 256] [--n 4] [--max-tokens 64] [--rounds 2]

Model: random-init, the tiny recipe's architecture, exported beside a toy tokenizer in a temporary folder (as
bench/rollout_throughput.py). Rounds alternate ours / direct; the best of each is compared. "ours" counts the
generation phase (the engine start is reported apart, as the direct run's is excluded); "ours, whole job" adds
loading the prompts and the filters. Prints one table and the ratio (target >= 0.9).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.rollout_throughput import build_model  # noqa: E402

DIRECT = textwrap.dedent("""
    import json, sys, time
    from vllm import LLM, SamplingParams
    if __name__ == "__main__":
        a = json.loads(sys.argv[1])
        llm = LLM(a["model"], tokenizer=a["tokenizer"], dtype="float32", max_model_len=a["max_model_len"],
                  max_num_seqs=a["max_num_seqs"], enforce_eager=True, seed=0)
        params = [SamplingParams(n=a["n"], temperature=a["temperature"], max_tokens=a["max_tokens"], seed=i)
                  for i in range(len(a["prompts"]))]
        conversations = [[{"role": "user", "content": p}] for p in a["prompts"]]
        llm.chat(conversations[:8], params[:8], use_tqdm=False)  # warm-up
        start = time.perf_counter()
        out = llm.chat(conversations, params, use_tqdm=False)
        seconds = time.perf_counter() - start
        tokens = sum(len(c.token_ids) for o in out for c in o.outputs)
        print("RESULT", json.dumps({"tokens": tokens, "seconds": seconds}))
""")


def distill_job(folder: Path, model: Path, prompts: Path, args: argparse.Namespace) -> dict[str, Any]:
    block = {"prompts": {"path": str(prompts), "text_field": "prompt", "split": "train"}, "answer_field": "answer",
             "max_tokens": args.max_tokens, "temperature": 0.7, "top_p": 1.0, "seed": 0, "max_num_seqs": args.max_num_seqs,
             "request_timeout": 600, "retries": 2, "samples_per_prompt": args.n,
             "filters": {"verify_answers": False, "dedup": True, "dedup_threshold": 0.8, "max_length": None}}
    return {"id": "bench-distill", "kind": "distill", "hash": "bench", "recipe_dir": str(folder),
            "config": {"distill": block, "models": {"teacher": {"kind": "path", "path": str(model)}},
                       "output": "sft", "tokenizer": str(model),
                       "serve": {"gpus": 0, "max_model_len": 256, "environment": "inference-cpu"}}}


def run_ours(job: dict[str, Any], out: Path) -> dict[str, float]:
    from runtime.generate.distill import run_distill

    os.environ["RECIPE_OUTPUT_DIR"] = str(out)
    start = time.perf_counter()
    run_distill(job)
    wall = time.perf_counter() - start
    done = json.loads((out / "DONE.json").read_text())
    provenance = json.loads((out / "provenance.json").read_text())
    tokens = sum(int(r.get("tokens") or 0) for line in (out / "generations" / "teacher.jsonl").read_text().splitlines()
                 for r in json.loads(line)["replies"])
    generation = float(done["generation"]["seconds"])
    start_s = float(provenance["teacher"]["start_s"])
    return {"tokens": tokens, "seconds": generation, "job_seconds": wall - start_s, "start_s": start_s}


def run_direct(python: Path, model: Path, prompts: list[str], args: argparse.Namespace) -> dict[str, float]:
    spec = {"model": str(model), "tokenizer": str(model), "max_model_len": 256, "max_num_seqs": args.max_num_seqs,
            "n": args.n, "temperature": 0.7, "max_tokens": args.max_tokens, "prompts": prompts}
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1", VLLM_NO_USAGE_STATS="1")
    result = subprocess.run([str(python), "-c", DIRECT, json.dumps(spec)], capture_output=True, text=True, env=env,
                            cwd=tempfile.gettempdir())
    line = next((x for x in result.stdout.splitlines() if x.startswith("RESULT ")), None)
    if result.returncode != 0 or line is None:
        raise SystemExit(f"direct vLLM run failed:\n{result.stderr[-2000:]}")
    return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-num-seqs", type=int, default=128, help="the engine's batch, the same on both paths")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    from runtime import environments

    python = environments.ensure("inference-cpu")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model, _, _ = build_model(folder)
        questions = [f"What is {i} + {i % 97}?" for i in range(args.prompts)]
        prompts = folder / "prompts.jsonl"
        prompts.write_text("".join(json.dumps({"prompt": q, "answer": "0"}) + "\n" for q in questions))
        job = distill_job(folder, model, prompts, args)
        ours, direct = [], []
        for r in range(args.rounds):
            ours.append(run_ours(job, folder / f"ours-{r}"))
            direct.append(run_direct(python, model, questions, args))
    rate = lambda x: x["tokens"] / x["seconds"]  # noqa: E731
    best_ours, best_direct = max(ours, key=rate), max(direct, key=rate)
    whole = max(x["tokens"] / x["job_seconds"] for x in ours)
    print(f"{args.prompts} prompts x {args.n} samples, up to {args.max_tokens} tokens; best of {args.rounds} rounds; "
          f"load {os.getloadavg()[0]:.1f}")
    print(f"{'path':<22}{'tokens':>9}{'seconds':>9}{'tokens/s':>10}")
    print(f"{'vLLM LLM.chat':<22}{best_direct['tokens']:>9}{best_direct['seconds']:>9.2f}{rate(best_direct):>10.0f}")
    print(f"{'ours (generation)':<22}{best_ours['tokens']:>9}{best_ours['seconds']:>9.2f}{rate(best_ours):>10.0f}")
    print(f"{'ours (whole job)':<22}{'':>9}{'':>9}{whole:>10.0f}")
    print(f"server start (ours): {min(x['start_s'] for x in ours):.1f} s")
    print(f"ratio ours/direct: {rate(best_ours) / rate(best_direct):.2f} (generation), "
          f"{whole / rate(best_direct):.2f} (whole job)")


if __name__ == "__main__":
    main()
