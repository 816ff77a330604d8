"""Golden files for compiled plans and rendered launch scripts.

Regenerate after an intended change with:  UPDATE_GOLDEN=1 python -m pytest tests/compiler/test_golden_plan.py
and review the diff of tests/golden/plan/ like any other code change.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from compiler.cli import main

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "plan"
CASES = {
    "tiny-think": ["plan.json", "jobs/pretrain/job.sbatch", "jobs/dpo/config.json", "jobs/rlvr/config.json"],
    "tiny-think-full": ["plan.json", "jobs/mix-swarm/job.sbatch", "jobs/dpo-delta-pairs/config.json"],
    "olmo3-7b-think": ["plan.json", "jobs/rlvr-rollout/job.sbatch", "jobs/mix-swarm/job.sbatch", "jobs/long-context/config.json"],
}

RECIPE_FILES = {name: ROOT / "recipes" / f"{name}.yaml" for name in CASES}
RECIPE_FILES["tiny-think-full"] = ROOT / "tests" / "compiler" / "recipes" / "tiny-think-full.yaml"


def _normalise(rel: str, text: str) -> str:
    """recipe_dir is relative to the output folder, which is a temporary path here."""
    if rel.endswith(".json"):
        data = json.loads(text)
        data["recipe_dir"] = "<recipe_dir>"
        return json.dumps(data, indent=2, sort_keys=True) + "\n"
    return text


@pytest.mark.parametrize("recipe", sorted(CASES))
def test_compiled_files_match_golden(recipe: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compile", str(RECIPE_FILES[recipe]), "-o", str(tmp_path)]) == 0
    capsys.readouterr()
    for rel in CASES[recipe]:
        got = _normalise(rel, (tmp_path / recipe / rel).read_text())
        golden = GOLDEN / recipe / rel
        if os.environ.get("UPDATE_GOLDEN"):
            golden.parent.mkdir(parents=True, exist_ok=True)
            golden.write_text(got)
        assert got == golden.read_text(), f"{golden} differs: UPDATE_GOLDEN=1 if the change is intended"


@pytest.mark.parametrize("recipe", sorted(CASES))
def test_every_rendered_script_parses(recipe: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compile", str(RECIPE_FILES[recipe]), "-o", str(tmp_path)]) == 0
    capsys.readouterr()
    scripts = sorted((tmp_path / recipe / "jobs").glob("*/job.sbatch"))
    plan = json.loads((tmp_path / recipe / "plan.json").read_text())
    assert len(scripts) == len(plan["jobs"])
    for script in scripts:
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script}: {result.stderr}"


def test_array_and_dependencies_in_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compile", str(ROOT / "recipes" / "olmo3-7b-think.yaml"), "-o", str(tmp_path)]) == 0
    capsys.readouterr()
    plan = json.loads((tmp_path / "olmo3-7b-think" / "plan.json").read_text())
    jobs = {job["id"]: job for job in plan["jobs"]}
    assert jobs["mix-swarm"]["array"]["size"] == 512
    assert "#SBATCH --array=0-511%" in (tmp_path / "olmo3-7b-think" / "jobs" / "mix-swarm" / "job.sbatch").read_text()
    assert jobs["pretrain"]["depends_on"] == ["mix-solve"]
    assert jobs["pretrain"]["config"]["data"]["weights"] == {"file": "mix.json", "from_job": "mix-solve"}
    assert jobs["rlvr"]["group"] == jobs["rlvr-rollout"]["group"] == "rlvr"
    assert jobs["rlvr"]["config"]["rl"]["rollout_job"] == "rlvr-rollout"
    assert jobs["rlvr-rollout"]["config"]["trainer_job"] == "rlvr"
    order = list(jobs)
    for job in plan["jobs"]:
        assert all(order.index(parent) < order.index(job["id"]) for parent in job["depends_on"])
    # Resolved batch arithmetic: 4M tokens / 8192 = 512 sequences over 512 GPUs, one micro-batch each.
    scale = jobs["pretrain"]["config"]["scale"]
    assert (scale["global_batch_sequences"], scale["grad_accum"], scale["parallelism"]["fsdp"]) == (512, 1, 512)
    assert jobs["long-context"]["config"]["model"]["max_seq_len"] == 65536
    assert jobs["sft"]["config"]["model"]["rope_scaling"]["factor"] == 8


def test_compile_writes_nothing_on_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main(["compile", str(ROOT / "recipes" / "tiny-think.yaml"), "-o", str(out), "--set", "stages.sft.lr=-1"])
    assert code == 2
    assert not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["<--set stages.sft.lr=-1>:1:15: stages[5].lr: must be > 0.0 (got -1)"]


def test_recompile_replaces_previous_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = str(ROOT / "recipes" / "tiny-think.yaml")
    assert main(["compile", recipe, "-o", str(tmp_path)]) == 0
    stale = tmp_path / "tiny-think" / "jobs" / "stale"
    stale.mkdir()
    assert main(["compile", recipe, "-o", str(tmp_path)]) == 0
    capsys.readouterr()
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-think"]


def test_every_model_job_reads_the_recipe_tokenizer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compile", str(RECIPE_FILES["tiny-think-full"]), "-o", str(tmp_path)]) == 0
    assert "no data.tokenizer" not in capsys.readouterr().out
    plan = json.loads((tmp_path / "tiny-think-full" / "plan.json").read_text())
    # Eval jobs read their model's export, tokenizer included.
    readers = [job for job in plan["jobs"] if ("model" in job["config"] or "proxy" in job["config"]) and job["kind"] != "eval"]
    assert {job["kind"] for job in readers} >= {"pretrain", "sft", "dpo", "rlvr_trainer", "rlvr_rollout", "regmix_swarm"}
    assert all(job["config"]["tokenizer"] == "../data/toy/tokenizer" for job in readers)


def test_a_recipe_without_tokenizer_compiles_with_a_located_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compile", str(ROOT / "recipes" / "tiny-think.yaml"), "-o", str(tmp_path), "--set", "data.tokenizer=null"]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if "no data.tokenizer" in line]
    assert len(warnings) == 1
    assert re.match(r"^\S*tiny-think\.yaml:\d+:\d+: warning: data: no data\.tokenizer", warnings[0]), warnings[0]
