"""Benchmark: `recipe compile` wall time against `python -c "import torch"`, on the same interpreter.

    python bench/compile_speed.py [--runs 7]

Needs torch importable by this interpreter: `pip install -e '.[runtime]'` (torch 2.14.1, from local disk here).
Prints the median of each, their ratio (target: at most 0.25), and the median compile time of a
generated recipe with a 4,096-proxy swarm and 10 stages (target: under 1 s).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "olmo3-7b-think.yaml"

BIG_RECIPE = """\
extends: {base}
name: swarm-4096
data:
  mix:
    swarm_size: 4096
stages:
  - {{name: midtrain-2, kind: midtrain, from: midtrain, resources: {{nodes: 32}}, lr: 1.0e-4,
      mix: {{web: 0.5, code: 0.25, math: 0.25}}, global_batch_tokens: 4194304, seq_len: 8192, tokens: 50000000000,
      activation_checkpointing: selective}}
  - {{name: sft-2, kind: sft, from: sft, resources: {{nodes: 8}}, dataset: {{hf: allenai/tulu-3-sft-mixture}},
      lr: 1.0e-5, global_batch_tokens: 1048576, seq_len: 32768, parallelism: {{cp: 2}}, tokens: 5000000000,
      activation_checkpointing: full}}
  - {{name: dpo-2, kind: dpo, from: sft-2, resources: {{nodes: 4}}, pairs: {{hf: allenai/preference-pairs}},
      lr: 1.0e-7, global_batch_sequences: 128, seq_len: 16384, steps: 500, activation_checkpointing: full}}
  - {{name: dpo-3, kind: dpo, from: dpo-2, resources: {{nodes: 4}}, pairs: {{hf: allenai/preference-pairs}},
      lr: 5.0e-8, global_batch_sequences: 128, seq_len: 16384, steps: 500, activation_checkpointing: full}}
"""


def median_seconds(cmd: list[str], runs: int, cwd: Path) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        times.append(time.perf_counter() - start)
        if result.returncode != 0:
            sys.exit(f"command failed: {' '.join(cmd)}\n{result.stderr.strip()}")
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    probe = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True)
    if probe.returncode != 0:
        sys.exit("torch is not importable by this interpreter: pip install -e '.[runtime]'")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "build"
        compile_cmd = [sys.executable, "-m", "compiler.cli", "compile", str(RECIPE), "-o", str(out)]
        median_seconds(compile_cmd, 1, ROOT)  # warm the file cache for both sides alike
        median_seconds([sys.executable, "-c", "import torch"], 1, ROOT)
        compile_s = median_seconds(compile_cmd, args.runs, ROOT)
        torch_s = median_seconds([sys.executable, "-c", "import torch"], args.runs, ROOT)
        big = Path(tmp) / "swarm-4096.yaml"
        big.write_text(BIG_RECIPE.format(base=RECIPE))
        big_cmd = [sys.executable, "-m", "compiler.cli", "compile", str(big), "-o", str(out)]
        big_s = median_seconds(big_cmd, args.runs, ROOT)
        plan = json.loads((out / "swarm-4096" / "plan.json").read_text())
        stages = {job["stage"] for job in plan["jobs"]} - {"data.mix"}
        swarm = next(job["array"]["size"] for job in plan["jobs"] if job["kind"] == "regmix_swarm")
    ratio = compile_s / torch_s
    print(f"recipe compile olmo3-7b-think: median {compile_s * 1000:.0f} ms over {args.runs} runs")
    print(f"python -c 'import torch':      median {torch_s * 1000:.0f} ms over {args.runs} runs")
    print(f"ratio compile / import torch:  {ratio:.3f} (target <= 0.25: {'PASS' if ratio <= 0.25 else 'FAIL'})")
    print(f"recipe compile, {swarm:,}-proxy swarm + {len(stages)} stages: median {big_s * 1000:.0f} ms (target < 1000 ms: {'PASS' if big_s < 1 else 'FAIL'})")


if __name__ == "__main__":
    main()
