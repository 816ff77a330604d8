"""The evals block: which eval jobs a plan gets, metric names, and mistakes in metric names and task files."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from conftest import RECIPES, TINY, edit, run_main
from tests.compiler.test_errors import check_failed, display, expect_one, line_of, position

EVALS = RECIPES / "evals"


def compile_plan(recipe: Path, out: Path, *sets: str) -> dict[str, Any]:
    args: list[object] = ["compile", recipe, "-o", out]
    for s in sets:
        args += ["--set", s]
    result = run_main(args)
    assert result.code == 0, result.err
    return json.loads(next(out.glob("*/plan.json")).read_text(encoding="utf-8"))


def jobs(plan: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {job["id"]: job for job in plan["jobs"]}


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Path:
    """tiny-think and its task files, in a folder a test may change."""
    folder = tmp_path / "recipes"
    folder.mkdir()
    shutil.copy(TINY, folder / TINY.name)
    shutil.copytree(EVALS, folder / "evals")
    return folder


# ---------------------------------------------------------------- eval jobs in the plan


def test_every_stage_gets_an_eval_job_for_each_model_it_makes(tmp_path: Path) -> None:
    plan = jobs(compile_plan(TINY, tmp_path / "out"))
    evals = {job_id: job for job_id, job in plan.items() if job["kind"] == "eval" and not job["config"]["model"]["proxies"]}
    assert set(evals) == {f"eval-{j}" for j in ("pretrain", "midtrain", "long-context", "teacher", "sft", "dpo", "rlvr", "rlvr-random-reward")}
    for job_id, job in evals.items():
        evaluated = job_id.removeprefix("eval-")
        assert job["depends_on"] == [evaluated] and job["config"]["model"]["job"] == evaluated
        assert job["entry"] == "runtime.evals:run_eval" and job["config"]["environment"] == "inference-cpu"
    ids = list(plan)
    assert ids.index("eval-pretrain") == ids.index("pretrain") + 1  # the plan reads stage by stage


def test_base_models_get_base_suites_and_chat_models_chat_suites(tmp_path: Path) -> None:
    plan = jobs(compile_plan(TINY, tmp_path / "out"))
    pretrain, sft = plan["eval-pretrain"]["config"], plan["eval-sft"]["config"]
    assert sorted(pretrain["suites"]) == ["gen", "mc", "toy"] and pretrain["model"]["format"] == "base"
    assert sorted(sft["suites"]) == ["chat", "toy"] and sft["model"]["format"] == "chat"
    assert sft["suites"]["chat"]["chat_template"] is True
    assert pretrain["suites"]["mc"]["chat_template"] is False
    assert pretrain["model"]["max_model_len"] == 256 and sft["model"]["max_model_len"] == 512  # after long-context
    assert "toy/text/bpb" in pretrain["metrics"] and "gen/toy_arith/exact_match" in pretrain["metrics"]
    assert "mc/macro/acc" in pretrain["metrics"]  # toy_arith_mc and toy_pairs both report acc
    assert not any(m.startswith("gen/macro/") for m in pretrain["metrics"])  # one task: no average
    assert "chat/toy_pairs_chat/acc_norm" in sft["metrics"]  # metric_list from the included toy_pairs.yaml


def test_bpb_suite_over_data_sources_reads_their_eval_split(tmp_path: Path) -> None:
    plan = jobs(compile_plan(TINY, tmp_path / "out"))
    sets = plan["eval-pretrain"]["config"]["suites"]["toy"]["sets"]
    assert sorted(sets) == ["arithmetic", "code", "text", "words"]
    assert sets["text"] == {"hf": None, "path": "../data/toy/text", "subset": None, "split": "validation", "text_field": "text"}


@pytest.mark.parametrize("when, expected", [
    ("end", {"eval-rlvr", "eval-rlvr-random-reward"}),
    ("none", set()),
])
def test_when_picks_the_stages(tmp_path: Path, when: str, expected: set[str]) -> None:
    plan = jobs(compile_plan(TINY, tmp_path / "out", f"evals.when={when}"))
    assert {j for j, job in plan.items() if job["kind"] == "eval" and j != "mix-swarm-eval"} == expected


def test_a_stage_list_overrides_when(tmp_path: Path) -> None:
    plan = jobs(compile_plan(TINY, tmp_path / "out", "evals.when=none", "stages.sft.evals=[toy]"))
    assert [j for j, job in plan.items() if job["kind"] == "eval" and j != "mix-swarm-eval"] == ["eval-sft"]
    assert list(plan["eval-sft"]["config"]["suites"]) == ["toy"]


def test_editing_a_task_file_reruns_only_the_evals_that_use_it(tiny_dir: Path, tmp_path: Path) -> None:
    recipe = tiny_dir / TINY.name
    before = jobs(compile_plan(recipe, tmp_path / "a"))
    chat_task = tiny_dir / "evals" / "toy_arith_chat.yaml"  # the chat suite's only
    chat_task.write_text(chat_task.read_text(encoding="utf-8") + "# edited\n", encoding="utf-8")
    after = jobs(compile_plan(recipe, tmp_path / "b"))
    changed = {j for j in before if before[j]["hash"] != after[j]["hash"]}
    assert changed == {"eval-teacher", "eval-sft", "eval-dpo", "eval-rlvr", "eval-rlvr-random-reward"}
    # a task file the proxies' evals read (toy_pairs.yaml, in mc; included by chat's toy_pairs_chat.yaml) moves
    # the fit, the solve and every stage trained on the solved mix
    base_task = tiny_dir / "evals" / "toy_pairs.yaml"
    base_task.write_text(base_task.read_text(encoding="utf-8") + "# edited\n", encoding="utf-8")
    again = jobs(compile_plan(recipe, tmp_path / "c"))
    assert {"mix-swarm-eval", "mix-fit", "mix-solve", "pretrain"} <= {j for j in after if after[j]["hash"] != again[j]["hash"]}
    assert again["mix-swarm"]["hash"] == before["mix-swarm"]["hash"]


def test_the_swarm_proxies_are_evaluated_and_the_fit_reads_them(tmp_path: Path, tiny_full_text: str) -> None:
    recipe = tmp_path / "full.yaml"
    recipe.write_text(tiny_full_text, encoding="utf-8")
    plan = jobs(compile_plan(recipe, tmp_path / "out"))
    proxies = plan["mix-swarm-eval"]
    assert proxies["array"] == plan["mix-swarm"]["array"] and proxies["depends_on"] == ["mix-swarm"]
    assert proxies["config"]["model"]["proxies"] is True and proxies["config"]["model"]["max_model_len"] == 128
    # The objective names bpb/text/bpb and lm_eval/toy_arith/exact_match: those two suites run on every proxy.
    assert sorted(proxies["config"]["suites"]) == ["bpb", "lm_eval"]
    assert "mix-swarm-eval" in plan["mix-fit"]["depends_on"] and plan["mix-fit"]["config"]["metrics_job"] == "mix-swarm-eval"


def test_plan_lists_every_metric_and_the_report_headlines(tmp_path: Path) -> None:
    plan = compile_plan(TINY, tmp_path / "out")
    assert plan["evals"]["report"][0] == "toy/text/bpb"
    assert set(plan["evals"]["report"]) <= set(plan["evals"]["metrics"])


def test_registered_lm_eval_tasks_need_known_metrics(tmp_path: Path) -> None:
    plan = jobs(compile_plan(RECIPES / "olmo3-7b-think.yaml", tmp_path / "out"))
    base = plan["eval-pretrain"]["config"]["suites"]["lm_eval"]
    assert base["tasks"][0] == {"name": "mmlu", "file": None, "sha256": None}
    assert "lm_eval/macro/acc" in plan["eval-pretrain"]["config"]["metrics"]
    assert plan["eval-pretrain"]["config"]["environment"] == "inference-cuda"
    assert plan["eval-pretrain"]["resources"]["gpus"] == 1


# ---------------------------------------------------------------- mistakes: one located line each


def test_objective_metric_typo_suggests_the_metric(tmp_path: Path, tiny_full_text: str) -> None:
    text = edit(tiny_full_text, "metric: bpb/text/bpb", "metric: bpb/txt/bpb")
    message = expect_one(tmp_path, text, "bpb/txt/bpb", "data.mix.objective[0].metric", value="bpb/txt/bpb")
    assert "no eval produces the proxies' objective metric 'bpb/txt/bpb' (did you mean 'bpb/text/bpb'?)" in message


def test_objective_metric_of_a_suite_the_proxies_do_not_run(tmp_path: Path, tiny_full_text: str) -> None:
    text = edit(tiny_full_text, "  report: [", "  proxies: [bpb]\n  report: [")
    message = expect_one(tmp_path, text, "lm_eval/toy_arith/exact_match, weight", "data.mix.objective[1].metric",
                         value="lm_eval/toy_arith/exact_match")
    assert "suites bpb" in message


def test_report_metric_must_exist(tmp_path: Path, tiny_dir: Path) -> None:
    recipe = tiny_dir / TINY.name
    text = edit(recipe.read_text(encoding="utf-8"), "chat/toy_arith_chat/exact_match]", "chat/toy_arith_chat/exact_matc]")
    recipe.write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    lines = check_failed(run_main(["compile", recipe, "-o", out]), out)
    assert len(lines) == 1
    assert lines[0].startswith(f"{display(recipe)}:{position(text, 'report:', 'chat/toy_arith_chat/exact_matc')}: evals.report[4]: ")
    assert "(did you mean 'chat/toy_arith_chat/exact_match'?)" in lines[0]


def test_unknown_suite_in_a_stage(tmp_path: Path, tiny_dir: Path) -> None:
    recipe = tiny_dir / TINY.name
    out = tmp_path / "out"
    lines = check_failed(run_main(["compile", recipe, "-o", out, "--set", "stages.sft.evals=[chatt]"]), out)
    assert len(lines) == 1 and "stages[5].evals[0]: unknown suite 'chatt' (did you mean 'chat'?)" in lines[0]


def test_unknown_registered_task_says_how_to_declare_it(tmp_path: Path, tiny_dir: Path) -> None:
    recipe = tiny_dir / TINY.name
    out = tmp_path / "out"
    lines = check_failed(run_main(["compile", recipe, "-o", out, "--set", "evals.suites.chat.tasks=[gsm8kk]"]), out)
    assert any("the compiler does not know the metrics of lm-eval task 'gsm8kk' (did you mean 'gsm8k'?)" in line
               and "metrics: {gsm8kk: [acc, ...]}" in line for line in lines), lines
    plan = compile_plan(recipe, tmp_path / "ok", "evals.suites.chat.tasks=[my_task]", "evals.suites.chat.metrics={my_task: [acc]}",
                        "evals.report=[]")
    assert "chat/my_task/acc" in plan["evals"]["metrics"]


def test_missing_task_file_points_at_the_recipe_entry(tmp_path: Path, tiny_dir: Path) -> None:
    recipe = tiny_dir / TINY.name
    (tiny_dir / "evals" / "toy_arith_mc.yaml").unlink()
    text = recipe.read_text(encoding="utf-8")
    out = tmp_path / "out"
    lines = check_failed(run_main(["compile", recipe, "-o", out]), out)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{display(recipe)}:{position(text, 'tasks: [evals/toy_arith_mc.yaml', 'evals/toy_arith_mc.yaml')}: "
                               "evals.suites.mc.tasks[0]: task file evals/toy_arith_mc.yaml not found")


def test_yaml_error_in_a_task_file_is_located_in_that_file(tmp_path: Path, tiny_dir: Path) -> None:
    task = tiny_dir / "evals" / "toy_arith_mc.yaml"
    task.write_text(task.read_text(encoding="utf-8").replace("doc_to_target: 0", "doc_to_target: [0"), encoding="utf-8")
    out = tmp_path / "out"
    lines = check_failed(run_main(["compile", tiny_dir / TINY.name, "-o", out]), out)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{display(task)}:"), lines[0]
    assert "invalid YAML" in lines[0]


@pytest.mark.parametrize("old, new, where, needle", [
    ("task: toy_arith_mc\n", "", "task", None),
    ("output_type: multiple_choice", "output_type: multiple_choise", "output_type", "output_type:"),
    ("  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n", "  - acc\n", "metric_list", "metric_list:"),
])
def test_task_file_mistakes_are_located_in_that_file(tmp_path: Path, tiny_dir: Path, old: str, new: str, where: str,
                                                     needle: str | None) -> None:
    task = tiny_dir / "evals" / "toy_arith_mc.yaml"
    text = edit(task.read_text(encoding="utf-8"), old, new)
    task.write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    lines = check_failed(run_main(["compile", tiny_dir / TINY.name, "-o", out]), out)
    assert len(lines) == 1, lines
    line = f"{line_of(text, needle)}:1" if needle else "1:1"
    assert lines[0].startswith(f"{display(task)}:{line}: {where}: "), lines[0]


def test_an_include_cycle_is_an_error_not_a_hang(tmp_path: Path, tiny_dir: Path) -> None:
    task = tiny_dir / "evals" / "toy_pairs.yaml"
    task.write_text("include: toy_pairs_chat.yaml\n" + task.read_text(encoding="utf-8"), encoding="utf-8")
    out = tmp_path / "out"
    lines = check_failed(run_main(["compile", tiny_dir / TINY.name, "-o", out]), out)
    assert any("includes itself" in line for line in lines), lines


def test_no_evals_block_with_a_regmix_objective(tmp_path: Path, tiny_full_text: str) -> None:
    start, end = tiny_full_text.index("evals:\n"), tiny_full_text.index("stages:\n")
    text = tiny_full_text[:start] + tiny_full_text[end:]
    message = expect_one(tmp_path, text, "- {metric: bpb/text/bpb", "data.mix.objective", value="- {metric")
    assert "add an evals block" in message
