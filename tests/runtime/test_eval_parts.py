"""The eval job's pure parts, no inference environment needed: metric naming (runtime/evals/metrics.py), task files
(runtime/evals/tasks.py), the harness spec (runtime/evals/__init__.py), and what the modules import.

Run: `python -m pytest tests/runtime/test_eval_parts.py -q` (a few seconds). The real runs: test_evals.py.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from runtime.evals import harness_spec
from runtime.evals.metrics import SuiteTasks, missing, name_metrics, task_metrics
from runtime.evals.tasks import TaskFileError, write_tasks

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- metric names


def test_metric_names_drop_a_single_filter_and_keep_several() -> None:
    single = {"alias": "toy_arith", "exact_match,answer": 0.25, "exact_match_stderr,answer": 0.07}
    assert task_metrics(single) == ({"exact_match": 0.25}, {"exact_match": 0.07})
    mc = {"acc,none": 0.5, "acc_stderr,none": 0.1, "acc_norm,none": 0.75, "acc_norm_stderr,none": "N/A"}
    assert task_metrics(mc) == ({"acc": 0.5, "acc_norm": 0.75}, {"acc": 0.1})
    gsm = {"exact_match,strict-match": 0.1, "exact_match,flexible-extract": 0.3, "exact_match_stderr,strict-match": 0.01,
           "sample_len": 40, "name": "gsm8k"}
    assert task_metrics(gsm) == ({"exact_match_strict-match": 0.1, "exact_match_flexible-extract": 0.3},
                                 {"exact_match_strict-match": 0.01})


def test_suite_names_bpb_and_macro_averages() -> None:
    results = {
        "results": {
            "bpb.toy.arithmetic": {"bits_per_byte,none": 0.63, "bits_per_byte_stderr,none": "N/A"},
            "toy_arith": {"exact_match,answer": 0.25, "exact_match_stderr,answer": 0.07},
            "toy_pairs": {"acc,none": 0.8, "acc_norm,none": 0.7},
            "toy_arith_mc": {"acc,none": 0.4},
            "mmlu": {"acc,none": 0.3},
        },
        "n-samples": {"bpb.toy.arithmetic": {"original": 500, "effective": 500},
                      "toy_arith": {"original": 500, "effective": 32}, "toy_pairs": {"effective": 40},
                      "toy_arith_mc": {"effective": 32}, "mmlu_a": {"effective": 10}, "mmlu_b": {"effective": 5}},
        "group_subtasks": {"mmlu": ["mmlu_a", "mmlu_b"]},
    }
    suites = [SuiteTasks("toy", "bpb", (("arithmetic", "bpb.toy.arithmetic"),)),
              SuiteTasks("tasks", "lm_eval", (("toy_arith", "toy_arith"), ("toy_pairs", "toy_pairs"),
                                              ("toy_arith_mc", "toy_arith_mc"), ("mmlu", "mmlu")))]
    named = name_metrics(results, suites)
    assert named.metrics["toy/arithmetic/bpb"] == 0.63
    assert named.metrics["tasks/toy_arith/exact_match"] == 0.25
    assert math.isclose(named.metrics["tasks/macro/acc"], (0.8 + 0.4 + 0.3) / 3)
    # one task reports acc_norm, one exact_match: no "average" of one (the compiler plans none either)
    assert "tasks/macro/acc_norm" not in named.metrics and "tasks/macro/exact_match" not in named.metrics
    assert "toy/macro/bpb" not in named.metrics  # macro averages are for lm_eval suites
    assert named.stderr == {"tasks/toy_arith/exact_match": 0.07}
    assert named.samples == {"toy/arithmetic": 500, "tasks/toy_arith": 32, "tasks/toy_pairs": 40,
                             "tasks/toy_arith_mc": 32, "tasks/mmlu": 15}
    assert missing(named, ["tasks/toy_arith/exact_match", "tasks/gsm8k/exact_match"]) == ["tasks/gsm8k/exact_match"]


# --------------------------------------------------------------------------- task files


def _user_tree(root: Path) -> Path:
    """recipe_dir/evals/{base.yaml, chat.yaml (includes base), utils.py} and recipe_dir/../data/q.jsonl."""
    recipe_dir = root / "recipes"
    (recipe_dir / "evals").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "data" / "q.jsonl").write_text('{"q": "1 + 1", "a": "2"}\n')
    (recipe_dir / "evals" / "base.yaml").write_text(
        "# comment\ntask: base\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: ../../data/q.jsonl\n"
        "test_split: test\noutput_type: generate_until\ndoc_to_text: '{{q}}'\ndoc_to_target: '{{a}}'\n"
        "process_results: !function utils.score\n")
    (recipe_dir / "evals" / "chat.yaml").write_text("include: base.yaml\ntask: chat\n")
    (recipe_dir / "evals" / "utils.py").write_text("def score(doc, results):\n    return {}\n")
    return recipe_dir


def test_user_task_files_are_copied_with_absolute_paths(tmp_path: Path) -> None:
    recipe_dir = _user_tree(tmp_path)
    suites = {"tasks": {"kind": "lm_eval", "tasks": [{"name": "chat", "file": "evals/chat.yaml"},
                                                    {"name": "base", "file": "evals/base.yaml"},
                                                    {"name": "mmlu", "file": None}]},
              "toy": {"kind": "bpb", "sets": {"q": {"path": "../data/q.jsonl", "split": "test", "text_field": "q"},
                                              "hub": {"hf": "org/set", "subset": "en", "split": "validation",
                                                      "text_field": "text"}}}}
    refs = write_tasks(suites, recipe_dir, tmp_path / "out" / "tasks")
    chat, base, mmlu = refs["tasks"]
    assert (mmlu.spec, mmlu.shown) == ("mmlu", None)  # registered: passed by name
    assert chat.shown == "evals/chat.yaml"
    chat_copy = yaml.safe_load(Path(chat.spec).read_text())
    assert chat_copy["include"] == base.spec  # the include points at the copy of base.yaml
    base_text = Path(base.spec).read_text()
    assert "process_results: !function 'utils.score'" in base_text or "!function utils.score" in base_text
    assert (Path(base.spec).parent / "utils.py").is_file()  # the tag's module beside the copy
    base_copy = yaml.load(base_text, Loader=yaml.BaseLoader)
    assert base_copy["dataset_kwargs"]["data_files"]["test"] == str(tmp_path / "data" / "q.jsonl")
    q, hub = (yaml.safe_load(Path(r.spec).read_text()) for r in refs["toy"])
    assert q["task"] == "bpb.toy.q" and q["output_type"] == "loglikelihood_rolling"
    assert q["dataset_kwargs"]["data_files"] == {"test": str(tmp_path / "data" / "q.jsonl")}
    assert q["doc_to_target"] == "{{q}}" and "add_bos_token" not in json.dumps(q)
    assert (hub["dataset_path"], hub["dataset_name"], hub["test_split"]) == ("org/set", "en", "validation")


def test_a_folder_source_uses_its_split_file_and_bad_files_are_one_line(tmp_path: Path) -> None:
    recipe_dir = _user_tree(tmp_path)
    (tmp_path / "data" / "toy").mkdir()
    suites = {"toy": {"kind": "bpb", "sets": {"t": {"path": "../data/toy", "split": "validation"}}}}
    (ref,) = write_tasks(suites, recipe_dir, tmp_path / "tasks")["toy"]
    assert yaml.safe_load(Path(ref.spec).read_text())["dataset_kwargs"]["data_files"] == {
        "validation": str(tmp_path / "data" / "toy" / "validation.jsonl")}
    (recipe_dir / "evals" / "bad.yaml").write_text("task: bad\ndoc_to_text: [unclosed\n")
    for file, expected in [("evals/bad.yaml", "evals/bad.yaml: invalid YAML: "),
                           ("evals/none.yaml", "evals/none.yaml: not found (looked for ")]:
        with pytest.raises(TaskFileError) as info:
            write_tasks({"s": {"kind": "lm_eval", "tasks": [{"name": "x", "file": file}]}}, recipe_dir, tmp_path / "t")
        assert str(info.value).startswith(expected) and "\n" not in str(info.value)


def test_harness_spec_groups_suites_into_calls(tmp_path: Path) -> None:
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"max_position_embeddings": 256}))
    recipe_dir = _user_tree(tmp_path)
    suites = {
        "toy": {"kind": "bpb", "limit": None, "sets": {"q": {"path": "../data/q.jsonl", "split": "test"}}},
        "base": {"kind": "lm_eval", "limit": None, "num_fewshot": None, "chat_template": False,
                 "tasks": [{"name": "base", "file": "evals/base.yaml"}]},
        "chat": {"kind": "lm_eval", "limit": None, "num_fewshot": None, "chat_template": True,
                 "tasks": [{"name": "chat", "file": "evals/chat.yaml"}]},
    }
    job = {"id": "eval-sft", "config": {"model": {"job": "sft", "max_model_len": 512}, "backend": "vllm",
                                        "suites": suites, "seed": 3}}
    refs = write_tasks(suites, recipe_dir, tmp_path / "out" / "tasks")
    spec = harness_spec(job, hf, tmp_path / "out", refs, "cpu")
    assert [t["name"] for t in spec["tasks"]] == ["q", "base", "chat"]
    assert [(c["tasks"], c["apply_chat_template"]) for c in spec["calls"]] == [([0, 1], False), ([2], True)]
    assert spec["max_model_len"] == 256  # capped at the export's max_position_embeddings (vLLM refuses more)
    assert spec["include_defaults"] is False and spec["seed"] == 3 and spec["dtype"] == "float32"
    suites["base"]["tasks"].append({"name": "mmlu", "file": None})
    refs = write_tasks(suites, recipe_dir, tmp_path / "out" / "tasks")
    assert harness_spec(job, hf, tmp_path / "out", refs, "cpu")["include_defaults"] is True


@pytest.mark.parametrize("module", ["runtime.evals", "runtime.evals.harness", "runtime.environments"])
def test_modules_import_only_the_standard_library(module: str) -> None:
    """The harness runs in the inference environment (no pydantic, torchtitan, ...); the entry and the
    environments are imported by every launch (no torch)."""
    code = (f"import sys; before = set(sys.modules); import {module}; "
            "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
            "print(sorted(new - set(sys.stdlib_module_names) - {'runtime'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_paths_are_relative_to_the_recipe_dir_as_the_trainer_finds_it(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from runtime.evals import _recipe_dir

    job = {"id": "eval-sft", "recipe": "tiny", "recipe_dir": "../../recipes"}  # as `recipe compile` writes it
    monkeypatch.delenv("RECIPE_RECIPE_DIR", raising=False)
    monkeypatch.setenv("RECIPE_JOB_DIR", str(tmp_path / "build" / "tiny" / "jobs" / "eval-sft"))
    assert _recipe_dir(job) == (tmp_path / "recipes").resolve()  # relative to the plan folder build/tiny/
    assert _recipe_dir({**job, "recipe_dir": "/abs/recipes"}) == Path("/abs/recipes")  # as the launcher writes it
    monkeypatch.setenv("RECIPE_RECIPE_DIR", str(tmp_path / "elsewhere"))
    assert _recipe_dir(job) == (tmp_path / "elsewhere").resolve()


def test_the_entry_and_the_harness_agree_on_the_task_error_exit_code() -> None:
    """(In a subprocess: importing the harness installs its importlib.metadata shim.)"""
    from runtime.evals import EXIT_TASK

    code = "from runtime.evals.harness import EXIT_TASK; print(EXIT_TASK)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert int(out) == EXIT_TASK


def test_an_engine_process_that_dies_ends_the_harness_at_once(tmp_path: Path) -> None:
    """EngineWatch, in a subprocess standing in for the harness: its child (the 'engine') is killed mid-run."""
    error = tmp_path / "harness.error"
    code = ("import subprocess, time; from pathlib import Path; from runtime.evals.harness import EngineWatch\n"
            "engine = subprocess.Popen(['sleep', '30'])\n"
            f"watch = EngineWatch(Path({str(error)!r}), 'vllm', every_s=0.05)\n"
            "assert watch.pids == {engine.pid}, watch.pids\n"
            "engine.kill(); time.sleep(5); print('still running')\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "still running" not in result.stdout, result.stdout + result.stderr
    assert error.read_text().startswith("vllm backend failed: its engine process ")
    stopped = code.replace("engine.kill()", "watch.stop(); engine.kill()").replace("time.sleep(5)", "time.sleep(0.5)")
    assert subprocess.run([sys.executable, "-c", stopped], cwd=REPO, timeout=60).returncode == 0  # stopped: no exit


def test_the_harness_runs_offline_and_with_the_plans_thread_count(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from runtime.evals import harness_env

    for key in ("VLLM_CPU_OMP_THREADS_BIND", "VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_CPU_KVCACHE_SPACE", "OMP_NUM_THREADS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PYTHONPATH", "/somewhere/else")
    env = harness_env(tmp_path, "cpu")
    assert (env["PYTHONPATH"], env["HF_HUB_OFFLINE"], env["HF_DATASETS_OFFLINE"]) == (str(REPO), "1", "1")
    assert env["HF_DATASETS_CACHE"].startswith(str(tmp_path)) and env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0" and "OMP_NUM_THREADS" not in env
    assert "VLLM_CPU_OMP_THREADS_BIND" not in env  # one eval on the machine: vLLM's own binding
    shared = harness_env(tmp_path, "cpu", threads=1)
    assert (shared["OMP_NUM_THREADS"], shared["VLLM_CPU_OMP_THREADS_BIND"]) == ("1", "nobind")
    gpu = harness_env(tmp_path, "cuda")
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in gpu and "VLLM_CPU_KVCACHE_SPACE" not in gpu
