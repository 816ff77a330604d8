"""Data generation and decontamination in the plan: the distill and delta-pairs jobs, the decontaminate job, its
drop lists in every consumer's data reference, and one located line for each mistake in these blocks."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import DIAGNOSTIC, run_main

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "recipes" / "tiny-think.yaml"


def compile_plan(out: Path, *sets: str) -> dict[str, dict[str, Any]]:
    args: list[object] = ["compile", TINY, "-o", out]
    for s in sets:
        args += ["--set", s]
    result = run_main(args)
    assert result.code == 0, result.err
    plan = json.loads(next(out.glob("*/plan.json")).read_text(encoding="utf-8"))
    return {job["id"]: job for job in plan["jobs"]}


def compile_error(out: Path, *sets: str) -> list[str]:
    args: list[object] = ["compile", TINY, "-o", out]
    for s in sets:
        args += ["--set", s]
    result = run_main(args)
    assert result.code == 2 and "Traceback" not in result.err and not out.exists(), result.err
    assert all(DIAGNOSTIC.match(line) for line in result.err_lines), result.err_lines
    return result.err_lines


def test_generation_jobs_feed_their_stages(tmp_path: Path) -> None:
    jobs = compile_plan(tmp_path / "out")
    distill, delta = jobs["sft-distill"], jobs["dpo-delta-pairs"]
    assert distill["config"]["models"] == {"teacher": {"kind": "stage", "stage": "teacher", "job": "teacher"}}
    assert set(delta["config"]["models"]) == {"chosen", "rejected"}
    assert distill["depends_on"] == ["decontaminate", "teacher"]
    assert delta["depends_on"] == ["decontaminate", "teacher", "weak"]
    assert jobs["sft"]["config"]["data"] == {"from_job": "sft-distill", "file": "sft", "text_field": "messages"}
    assert jobs["dpo"]["config"]["data"] == {"from_job": "dpo-delta-pairs", "file": "pairs"}
    assert "sft-distill" in jobs["sft"]["depends_on"] and "dpo-delta-pairs" in jobs["dpo"]["depends_on"]
    assert distill["config"]["tokenizer"] == "../data/toy/tokenizer"  # length caps count the recipe's tokens
    assert distill["config"]["serve"] == {"gpus": 0, "max_model_len": 256, "environment": "inference-cpu"}
    # generated data is decontaminated by the job that makes it, with the recipe's settings
    assert distill["config"]["decontamination"]["eval_sets"]["toy_arith"]["text_field"] == "question"
    assert distill["estimates"]["sequences"] == 8000 * 4


def test_decontaminate_runs_first_and_every_static_dataset_is_checked_once(tmp_path: Path) -> None:
    jobs = compile_plan(tmp_path / "out")
    assert list(jobs)[0] == "decontaminate"
    datasets = jobs["decontaminate"]["config"]["datasets"]
    assert set(datasets) == {"source-arithmetic", "source-code", "source-text", "source-words", "teacher-dataset",
                             "sft-seed-prompts", "dpo-delta-prompts", "rlvr-prompts"}
    assert datasets["source-arithmetic"]["read_by"] == ["mix-swarm", "pretrain", "midtrain", "long-context"]
    assert datasets["teacher-dataset"]["read_by"] == ["teacher", "weak"]  # the same dataset: one key
    assert datasets["dpo-delta-prompts"]["fields"] == ["prompt"]
    arithmetic = jobs["pretrain"]["config"]["data"]["sources"]["arithmetic"]
    assert arithmetic["drop"] == {"from_job": "decontaminate", "file": "drop/source-arithmetic.json"}
    assert jobs["mix-swarm"]["config"]["sources"]["text"]["drop"]["file"] == "drop/source-text.json"
    assert jobs["rlvr"]["config"]["prompts"]["drop"]["file"] == "drop/rlvr-prompts.json"
    assert "decontaminate" in jobs["rlvr"]["depends_on"] and "decontaminate" in jobs["mix-swarm"]["depends_on"]
    # eval jobs read eval data: never filtered, never waiting
    assert "drop" not in json.dumps(jobs["eval-pretrain"]["config"])
    assert "decontaminate" not in jobs["eval-pretrain"]["depends_on"]


def test_policy_report_checks_without_holding_anything_back(tmp_path: Path) -> None:
    jobs = compile_plan(tmp_path / "out", "decontamination.policy=report")
    assert "decontaminate" in jobs and "decontaminate" not in jobs["pretrain"]["depends_on"]
    assert "drop" not in jobs["pretrain"]["config"]["data"]["sources"]["arithmetic"]


def test_policy_fail_holds_consumers_without_drop_lists(tmp_path: Path) -> None:
    jobs = compile_plan(tmp_path / "out", "decontamination.policy=fail")
    assert "decontaminate" in jobs["pretrain"]["depends_on"]
    assert "drop" not in jobs["pretrain"]["config"]["data"]["sources"]["arithmetic"]


def test_no_decontamination_block_no_job(tmp_path: Path) -> None:
    jobs = compile_plan(tmp_path / "out", "decontamination=null")
    assert "decontaminate" not in jobs and "decontamination" not in jobs["sft-distill"]["config"]


def test_an_endpoint_teacher_needs_no_gpus_and_no_stage(tmp_path: Path) -> None:
    jobs = compile_plan(tmp_path / "out", "stages.sft.distill.teacher={url: https://api.example.com/v1, model: big, "
                                          "api_key_env: TEACHER_KEY}")
    distill = jobs["sft-distill"]
    assert distill["config"]["models"]["teacher"] == {"kind": "endpoint", "url": "https://api.example.com/v1",
                                                      "model": "big", "api_key_env": "TEACHER_KEY"}
    assert distill["depends_on"] == ["decontaminate"] and distill["resources"]["gpus_per_node"] == 0
    assert "TEACHER_KEY" not in json.dumps(jobs["sft"])  # the name of the variable, never a key, and only here


@pytest.mark.parametrize("assignment, path, message", [
    ("stages.sft.distill.answer_field=null", "stages[5].distill", "filters.verify_answers needs answer_field"),
    ("stages.dpo.delta.answer_field=null", "stages[6].delta", "keep: chosen_correct needs answer_field"),
    ("stages.dpo.delta.rejected=teacher", "stages[6].delta.rejected", "rejected is the chosen model"),
    ("stages.sft.distill.teacher=dpo", "stages[5].distill.teacher", "'dpo' is a later stage"),
    ("stages.sft.distill.teacher=tacher", "stages[5].distill.teacher", "did you mean 'teacher'?"),
    ("stages.sft.distill.max_tokens=300", "stages[5].distill.max_tokens", "leaves no room for the prompt"),
    ("stages.sft.distill.filters.max_length=1000", "stages[5].distill.filters.max_length", "exceeds the model's"),
    ("stages.sft.distill.filters.over_length=cut", "stages[5].distill.filters.over_length", "'truncate'"),
    ("stages.dpo.delta.keep=best", "stages[6].delta.keep", "chosen_beats_rejected"),
    ("stages.sft.distill.teacher={url: ftp://x, model: m}", "stages[5].distill.teacher.url", "should match pattern"),
    ("stages.sft.distill.teacher={url: https://x.org, model: m, api_key_env: 'A KEY'}",
     "stages[5].distill.teacher.api_key_env", "should match pattern"),
    ("stages.sft.distill.teacher=[1]", "stages[5].distill.teacher", "valid string"),
    ("decontamination.policy=dorp", "decontamination.policy", "did you mean 'drop'?"),
    ("decontamination.eval_sets={}", "decontamination.eval_sets", "at least 1 item"),
    ("decontamination.ngram=0", "decontamination.ngram", "must be > 0"),
])
def test_mistakes_are_one_located_line(tmp_path: Path, assignment: str, path: str, message: str) -> None:
    lines = compile_error(tmp_path / "out", assignment)
    assert len(lines) == 1, lines
    assert f": {path}: " in lines[0] and message in lines[0], lines[0]
