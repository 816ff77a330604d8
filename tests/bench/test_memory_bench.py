"""bench/memory.py: the CPU allocator counter, and one small job measured against its compiled estimate.

Run: `python -m pytest tests/bench/test_memory_bench.py -q` (about 20 s on 2 cores: tiny-think's pretrain stage at
seq_len 64, micro-batch 2, 2 steps, on a toy world at scale 0.02).
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SETS = ["stages.pretrain.seq_len=64", "stages.pretrain.micro_batch_size=2", "stages.pretrain.global_batch_sequences=4"]


def _load_bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_memory", REPO / "bench" / "memory.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


def test_cpu_counter_follows_allocations_and_frees_between_marks() -> None:
    before = torch.empty(2**20, dtype=torch.uint8)  # allocated before the baseline: its free is not counted
    counter = bench.CpuCounter()
    counter.start()
    kept = torch.empty(2**20, dtype=torch.uint8)
    counter.mark("one")
    del before
    scratch = torch.empty(2**21, dtype=torch.uint8)
    del scratch
    counter.mark("two")
    phases = counter.stop()
    assert [p.name for p in phases] == ["one", "two"]
    assert phases[0].live_bytes == 2**20 and phases[0].peak_bytes == 2**20
    assert phases[1].peak_bytes == 2**20 + 2**21 and phases[1].live_bytes == 2**20
    assert kept.numel() == 2**20


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-think.yaml in a folder whose ../data/toy is a small generated toy world."""
    root = tmp_path_factory.mktemp("memory-bench")
    subprocess.run([sys.executable, "-m", "runtime.toyworld", str(root / "data" / "toy"), "--scale", "0.02"],
                   cwd=REPO, check=True, capture_output=True)
    (root / "recipes").mkdir()
    shutil.copytree(REPO / "recipes" / "evals", root / "recipes" / "evals")  # the recipe's eval task files
    return Path(shutil.copy(REPO / "recipes" / "tiny-think.yaml", root / "recipes" / "tiny-think.yaml"))


@pytest.fixture(scope="module")
def result(recipe: Path) -> dict[str, Any]:
    return bench.run(recipe, "pretrain", SETS, steps=2, threads=2)


def test_the_estimate_is_the_plans_for_that_job(recipe: Path, result: dict[str, Any]) -> None:
    from compiler.build import compile_recipe

    job = next(j for j in compile_recipe(recipe, SETS).plan["jobs"] if j["id"] == "pretrain")
    assert result["estimate"]["total_bytes"] == job["estimates"]["memory_per_gpu_bytes"]
    assert result["estimate"]["breakdown_bytes"] == job["estimates"]["memory_breakdown_bytes"]
    assert result["scale"]["seq_len"] == 64 and result["scale"]["micro_batch_size"] == 2
    assert result["scale"]["grad_accum"] == 2


def test_the_peak_covers_the_model_its_training_state_and_the_forward(result: dict[str, Any]) -> None:
    m = result["measured"]
    param_bytes = 4 * result["estimate"]["params"]  # fp32 on CPU
    assert m["device"] == "cpu" and m["threads"] == 2
    assert m["after_build_bytes"] >= param_bytes
    # params + grads + AdamW's two states, all allocated after the baseline and seen by the counter
    assert m["between_steps_bytes"] >= 4 * param_bytes
    assert m["forward_bytes"] > 0
    assert m["peak_bytes"] >= m["between_steps_bytes"] - param_bytes + m["forward_bytes"]
    assert [p["name"] for p in m["phases"]] == ["build", "step 1 start", "step 1 forward", "step 1",
                                                "step 2 start", "step 2 forward", "step 2"]
    assert m["peak_bytes"] == max(p["peak_bytes"] for p in m["phases"])
    assert 0.5 < result["ratio"] < 2.5, result["ratio"]  # the same order as the estimate (1.2-1.3 when written)


def test_json_has_the_fields_and_the_table_prints(result: dict[str, Any]) -> None:
    data = json.loads(json.dumps(result))
    assert data["format_version"] == bench.FORMAT_VERSION
    assert {"recipe", "stage", "job", "kind", "steps", "scale", "estimate", "measured", "ratio"} <= set(data)
    assert set(data["estimate"]["breakdown_bytes"]) == set(bench.BREAKDOWN)
    assert {"peak_bytes", "after_build_bytes", "between_steps_bytes", "forward_bytes", "method"} <= set(
        data["measured"])
    assert data["ratio"] == pytest.approx(data["measured"]["peak_bytes"] / data["estimate"]["total_bytes"])
    table = bench.report(result)
    assert "total (memory_per_gpu_bytes)" in table and f"{result['ratio']:.3f}" in table


def test_a_stage_it_cannot_run_is_refused_with_the_ones_it_can(recipe: Path) -> None:
    with pytest.raises(SystemExit, match="rlvr.*pretrain"):
        bench.compile_job(recipe, "rlvr", [])
