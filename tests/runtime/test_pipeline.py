"""The tiny pipeline end to end through `recipe launch` (local executor): every stage the runtime implements, on a
generated toy world, with real training.

- `test_shortened_tiny_pipeline` (CI): tiny-think with every stage cut short by `--set` (a few dozen steps each),
  on a 5% toy world: pretrain -> midtrain -> long-context -> teacher, weak -> sft (on the teacher's distilled
  samples) -> dpo (on teacher-vs-weak delta pairs) run in order, each from its parent's export, after a RegMix
  search over 8 small proxies and the decontamination check (which finds the 1 planted eval problem); lm-eval
  (hf backend) evaluates the pretrained model (base suites) and the SFT model (chat suites) only; RL is left out
  (`--only`: tests/runtime/test_rl.py runs it against a real sidecar). About 8 minutes on 2 cores.
- `test_full_tiny_pipeline` (`-m slow`): the recipe as shipped, on the full toy world, with the issue's
  done-criteria: losses fall, SFT's held-out arithmetic accuracy above the pretrained model's, DPO's held-out
  reward accuracy above 0.5, an eval job after every stage with every planned metric, and `recipe report`
  showing them. About 15 minutes on 2 cores.

Run: `python -m pytest tests/runtime/test_pipeline.py -q -p no:cacheprovider [-m slow]`.
"""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, TINY

TRAINING_JOBS = ["pretrain", "midtrain", "long-context", "teacher", "weak", "sft", "dpo"]
SHORT = ["stages.pretrain.tokens=150000", "stages.pretrain.checkpoint_every=20",
         "stages.midtrain.tokens=40000", "stages.long-context.tokens=40000",
         "stages.teacher.steps=20", "stages.weak.steps=6",
         # a 20-step teacher answers almost nothing right: keep its samples unverified, every pair
         "stages.sft.distill.num_prompts=48", "stages.sft.distill.samples_per_prompt=2",
         "stages.sft.distill.filters.verify_answers=false", "stages.dpo.delta.num_prompts=48", "stages.dpo.delta.keep=all",
         "stages.sft.steps=25", "stages.dpo.steps=8", "stages.dpo.lr=1e-4",
         "data.mix.swarm_size=8", "data.mix.proxy.tokens=20000",
         "evals.when=none", "stages.pretrain.evals=[toy, mc, gen]", "stages.sft.evals=[chat]",
         "evals.backend=hf"]  # lm-eval on vLLM: tests/runtime/test_evals.py; the generation jobs here start 3 engines
RL_JOBS = {"rlvr", "rlvr-rollout", "rlvr-random-reward", "rlvr-random-reward-rollout"}


def tiny_tree(root: Path, scale: float) -> Path:
    """recipes/tiny-think.yaml beside a generated toy world (data/toy at `scale`): the recipe's path."""
    (root / "recipes").mkdir(parents=True)
    shutil.copy(TINY, root / "recipes" / TINY.name)
    shutil.copytree(TINY.parent / "evals", root / "recipes" / "evals")
    subprocess.run([sys.executable, "-m", "runtime.toyworld", str(root / "data" / "toy"), "--scale", str(scale)],
                   cwd=REPO, check=True, capture_output=True)
    return root / "recipes" / TINY.name


def launch(recipe: Path, root: Path, sets: list[str], timeout: float,
           extra: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "compiler.cli", "launch", str(recipe), "--build", str(root / "build"),
            "--runs", str(root / "runs"), "--skip-unimplemented", "--allow-dirty", *(extra or [])]
    for item in sets:
        args += ["--set", item]
    return subprocess.run(args, cwd=REPO, text=True, capture_output=True, timeout=timeout)


def report(root: Path) -> dict[str, Any]:
    return json.loads((root / "runs" / "tiny-think" / "report.json").read_text())


def losses(job: dict[str, Any]) -> list[float]:
    lines = (Path(job["output_dir"]) / "metrics.jsonl").read_text().splitlines()
    return [m["loss"] for m in map(json.loads, lines) if "loss" in m]


def check_common(root: Path, result: subprocess.CompletedProcess[str], skipped: set[str]) -> dict[str, Any]:
    """The launch succeeded, every training stage before RL made an HF export, and exactly `skipped` was left out."""
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    rep = report(root)
    assert rep["ok"] is True
    jobs = rep["jobs"]
    for job_id in TRAINING_JOBS:
        assert jobs[job_id]["state"] == "done", (job_id, jobs[job_id])
        assert (Path(jobs[job_id]["output_dir"]) / "hf" / "model.safetensors").is_file(), job_id
    assert {j for j, v in jobs.items() if v["state"] == "skipped"} == skipped
    # each stage starts from its parent's export: its first loss is far below a random model's
    for job_id in ("midtrain", "long-context", "teacher"):
        assert losses(jobs[job_id])[0] < math.log(1024) - 3, job_id
    return jobs


def eval_metrics(jobs: dict[str, Any], job_id: str) -> dict[str, float]:
    """The eval job's metrics.json, checked against the names its plan config promised."""
    assert jobs[job_id]["state"] == "done", (job_id, jobs[job_id])
    out = Path(jobs[job_id]["output_dir"])
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    promised = json.loads((out / "config.json").read_text())["config"]["metrics"]
    assert set(promised) <= set(metrics), (job_id, sorted(set(promised) - set(metrics)))
    assert (out / "lm_eval" / "results.json").is_file()  # lm-eval's own output kept beside
    for name in promised:
        value = metrics[name]
        assert math.isfinite(value) and (value > 0 if name.endswith("/bpb") else 0 <= value <= 1), (name, value)
    return metrics


def check_regmix(jobs: dict[str, Any], proxies: int) -> dict[str, Any]:
    """The swarm trained and evaluated every proxy, the fit and solve wrote mix.json, and pretraining read it."""
    for job_id in ("mix-swarm", "mix-swarm-eval", "mix-fit", "mix-solve"):
        assert jobs[job_id]["state"] == "done", (job_id, jobs[job_id])
    swarm_eval = Path(jobs["mix-swarm-eval"]["output_dir"])
    assert len(list(swarm_eval.glob("proxy-*/metrics.json"))) == proxies
    mix = json.loads((Path(jobs["mix-solve"]["output_dir"]) / "mix.json").read_text())
    assert math.isclose(sum(mix["weights"].values()), 1.0, abs_tol=1e-6)
    assert mix["weights"]["text"] >= 0.1 - 1e-9  # the recipe's min_weight
    return mix


def check_datagen(jobs: dict[str, Any], planted: int) -> dict[str, Any]:
    """Decontamination found the planted eval problems (and only those) before training; distillation and delta
    pairs made the data SFT and DPO trained on."""
    out = {j: Path(jobs[j]["output_dir"]) for j in ("decontaminate", "sft-distill", "dpo-delta-pairs", "sft", "dpo")}
    decontam = json.loads((out["decontaminate"] / "report.json").read_text())
    assert decontam["datasets"]["source-arithmetic"]["contaminated"] == planted, decontam["datasets"]
    assert decontam["totals"]["contaminated"] == planted
    assert len(json.loads((out["decontaminate"] / "drop" / "source-arithmetic.json").read_text())) == planted
    distill = json.loads((out["sft-distill"] / "DONE.json").read_text())
    assert distill["counts"]["kept"] == sum(distill["splits"].values()) > 0
    assert distill["splits"]["train"] == len((out["sft-distill"] / "sft" / "train.jsonl").read_text().splitlines())
    assert json.loads((out["sft"] / "config.json").read_text())["config"]["data"]["from_job"] == "sft-distill"
    delta = json.loads((out["dpo-delta-pairs"] / "DONE.json").read_text())
    assert set(delta["gap"]) == {"chosen_accuracy", "rejected_accuracy", "gap", "chosen_beats_rejected"}
    assert delta["counts"]["kept"] == sum(delta["splits"].values()) > 0
    return {"decontam": decontam["totals"], "distill": distill["counts"], "delta": {**delta["gap"], **delta["counts"]}}


def recipe_report(root: Path) -> str:
    result = subprocess.run([sys.executable, "-m", "compiler.cli", "report", "tiny-think", "--runs", str(root / "runs")],
                            cwd=REPO, text=True, capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_shortened_tiny_pipeline(tmp_path: Path) -> None:
    recipe = tiny_tree(tmp_path, 0.05)
    # RL runs in tests/runtime/test_rl.py (a real sidecar) and in the slow full pipeline; here it is left out
    result = launch(recipe, tmp_path, SHORT, timeout=1800, extra=["--only", "dpo", "eval-pretrain", "eval-sft"])
    jobs = check_common(tmp_path, result, skipped=RL_JOBS)
    assert all("not selected" in jobs[j]["reason"] for j in RL_JOBS)
    base, chat = eval_metrics(jobs, "eval-pretrain"), eval_metrics(jobs, "eval-sft")
    assert "gen/toy_arith/exact_match" in base and "chat/toy_arith_chat/exact_match" in chat
    assert not any(j.startswith("eval-") for j in jobs if j not in ("eval-pretrain", "eval-sft"))
    check_regmix(jobs, proxies=8)
    check_datagen(jobs, planted=1)  # a 5% toy world plants 1 of its eval problems
    text = recipe_report(tmp_path)
    assert "headline metrics" in text and "gen/toy_arith/exact_match" in text and "mix/objective" in text
    pretrain = losses(jobs["pretrain"])
    assert pretrain[-1] < pretrain[0] - 3  # from ~ln(1024) = 6.9
    dpo = losses(jobs["dpo"])
    assert dpo[0] == pytest.approx(math.log(2), abs=1e-4)  # the policy starts at the frozen reference
    assert jobs["dpo"]["eval"]["held_out_pairs"]["pairs"] > 0
    for job_id in TRAINING_JOBS:
        assert 0.0 <= jobs[job_id]["eval"]["arith_exact_match"]["accuracy"] <= 1.0


@pytest.mark.slow
def test_full_tiny_pipeline(tmp_path: Path) -> None:
    recipe = tiny_tree(tmp_path, 1.0)
    result = launch(recipe, tmp_path, [], timeout=3600)
    jobs = check_common(tmp_path, result, skipped=set())
    for job_id in TRAINING_JOBS:
        curve = losses(jobs[job_id])
        assert sum(curve[-5:]) / 5 < sum(curve[:5]) / 5, job_id
    accuracy = {j: jobs[j]["eval"]["arith_exact_match"]["accuracy"] for j in TRAINING_JOBS}
    assert accuracy["sft"] > accuracy["pretrain"], accuracy
    assert jobs["dpo"]["eval"]["held_out_pairs"]["reward_accuracy"] > 0.5
    mix = check_regmix(jobs, proxies=24)
    datagen = check_datagen(jobs, planted=25)
    print(json.dumps({"datagen": datagen}))
    assert datagen["delta"]["gap"] > 0.1  # the early-stopped SFT is weaker than the teacher
    fit = json.loads((Path(jobs["mix-fit"]["output_dir"]) / "fit.json").read_text())
    print(json.dumps({"mix": mix["weights"], "fit": {k: v for k, v in fit.items() if k != "metrics"}}, default=str)[:2000])
    lm_eval = {j: eval_metrics(jobs, f"eval-{j}") for j in TRAINING_JOBS if j != "weak"}  # weak: evals []
    assert lm_eval["sft"]["chat/toy_arith_chat/exact_match"] > lm_eval["pretrain"]["base/toy_arith/exact_match"]
    # RLVR (issue 7): real rewards gain at least 10 points of held-out exact match, the random-reward control less
    gain = {j: jobs[j]["eval"]["arith_gain"] for j in ("rlvr", "rlvr-random-reward")}
    print(json.dumps({"rl_gain": gain}))
    assert gain["rlvr"] >= 0.10 and gain["rlvr"] > gain["rlvr-random-reward"] + 0.05, gain
    text = recipe_report(tmp_path)
    assert all(j in text for j in TRAINING_JOBS)
    print(json.dumps({"accuracy": accuracy, "dpo": jobs["dpo"]["eval"]["held_out_pairs"], "lm_eval": lm_eval}))
