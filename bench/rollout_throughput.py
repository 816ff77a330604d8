"""Rollout throughput: generated tokens/s through our sidecar client (HTTP, /inference/v1/generate) vs vLLM's Python
API (`vllm.LLM.generate`, in-process, no server) on the same prompts, model and sampling; plus server start time and
weight-push time.

    python bench/rollout_throughput.py [--prompts 8] [--n 8] [--max-tokens 96] [--rounds 3]

Model: random-init, the tiny recipe's architecture (recipes/tiny-think.yaml), exported with runtime/hf_export.py
beside a toy tokenizer, in a temporary folder. Runs in the trainer environment; the server and the Python-API run use
the inference-cpu environment (runtime.environments). Prints one table.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DIRECT = textwrap.dedent("""
    import json, sys, time
    from vllm import LLM, SamplingParams
    if __name__ == "__main__":
        a = json.loads(sys.argv[1])
        llm = LLM(a["model"], tokenizer=a["tokenizer"], dtype="float32", max_model_len=a["max_model_len"],
                  max_num_seqs=a["max_num_seqs"], enforce_eager=True, logprobs_mode="processed_logprobs", seed=0)
        params = SamplingParams(n=a["n"], temperature=1.0, max_tokens=a["max_tokens"], logprobs=0, ignore_eos=True,
                                detokenize=False)
        prompts = [{"prompt_token_ids": p} for p in a["prompts"]]
        llm.generate(prompts, params, use_tqdm=False)  # warm-up
        rates = []
        for _ in range(a["rounds"]):
            start = time.perf_counter()
            out = llm.generate(prompts, params, use_tqdm=False)
            tokens = sum(len(c.token_ids) for o in out for c in o.outputs)
            rates.append(tokens / (time.perf_counter() - start))
        print("RATES", json.dumps(rates))
""")


def build_model(folder: Path) -> tuple[Path, Path, dict]:
    from compiler.build import compile_recipe
    from runtime.hf_export import export_hf
    from runtime.model_factory import build_model as build
    from runtime.tokenizer import train_tokenizer
    from spec.model import ModelSpec

    plan = compile_recipe(str(ROOT / "recipes" / "tiny-think.yaml")).plan
    job = next(j for j in plan["jobs"] if j["kind"] == "rlvr_rollout")
    spec = ModelSpec.model_validate(job["config"]["model"])
    text = folder / "text.txt"
    text.write_text("\n".join(f"What is {a} plus {b}? The answer is {a + b}." for a in range(80) for b in range(12)))
    tokenizer = train_tokenizer([text], folder / "tokenizer", vocab_size=spec.vocab_size)
    hf = export_hf(build(spec, seed=0), spec, folder / "hf", extra_config={"bos_token_id": 0, "eos_token_id": 1})
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (hf / name).write_bytes((tokenizer / name).read_bytes())
    return hf, tokenizer, job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from runtime import environments
    from runtime.hf_export import hf_state_dict
    from runtime.model_factory import build_model as build
    from runtime.rollout.client import RolloutClient
    from runtime.rollout.server import ServerSettings, start_healthy
    from runtime.rollout.weights import read_manifest, write_weights, untie_for_serving
    from spec.model import ModelSpec

    python = environments.ensure("inference-cpu")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        hf, tokenizer, job = build_model(folder)
        served = untie_for_serving(hf, folder / "served")
        prompts = [[0] + [(17 * i + 3 * j) % 900 + 10 for j in range(20 + i)] for i in range(args.prompts)]
        rows = []
        server, ready_s = start_healthy(python, served, folder / "vllm.log",
                                        ServerSettings.from_job(job["config"], "cpu"), tokenizer=tokenizer)
        try:
            client = RolloutClient(server.url, generate_timeout=600)
            client.generate(prompts, n=args.n, max_tokens=args.max_tokens, ignore_eos=True)  # warm-up
            rates = []
            for _ in range(args.rounds):
                start = time.perf_counter()
                groups = client.generate(prompts, n=args.n, max_tokens=args.max_tokens, ignore_eos=True)
                rates.append(sum(len(s.token_ids) for g in groups for s in g) / (time.perf_counter() - start))
            rows.append(("sidecar client (HTTP)", max(rates), sorted(rates)[len(rates) // 2]))
            spec = ModelSpec.model_validate(job["config"]["model"])
            manifest = read_manifest(served)
            weights = hf_state_dict(build(spec, seed=1), spec)
            weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
            start = time.perf_counter()
            push = write_weights(weights, folder / "v1", manifest, served)
            write_s = time.perf_counter() - start
            update_s = client.update_weights_from_path(str(push), 1)
        finally:
            server.stop()
        spec_json = json.dumps({"model": str(served), "tokenizer": str(tokenizer), "prompts": prompts, "n": args.n,
                                "max_tokens": args.max_tokens, "rounds": args.rounds,
                                "max_model_len": job["config"]["rollout"]["max_model_len"],
                                "max_num_seqs": job["config"]["rollout"]["max_num_seqs"]})
        env = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
        out = subprocess.run([str(python), "-c", DIRECT, spec_json], capture_output=True, text=True, env=env)
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RATES ")), None)
        if line is None:
            raise SystemExit(f"the vLLM Python API run failed:\n{out.stderr[-2000:]}")
        direct = json.loads(line[6:])
        rows.append(("vLLM Python API (in-process)", max(direct), sorted(direct)[len(direct) // 2]))
    print(f"{args.prompts} prompts x n={args.n} x {args.max_tokens} tokens, tiny-think architecture, fp32, CPU")
    print(f"{'path':32} {'best tok/s':>11} {'median tok/s':>13}")
    for name, best, median in rows:
        print(f"{name:32} {best:11.0f} {median:13.0f}")
    print(f"server start {ready_s:.1f} s; weight push: write {write_s * 1000:.0f} ms, "
          f"reload+reset+label {update_s * 1000:.0f} ms")


if __name__ == "__main__":
    main()
