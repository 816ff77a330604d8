"""LM training jobs through torchtitan's Trainer on CPU (runtime/train.py, titan_config.py, lm_trainer.py).

Each job runs as `python -m runtime.run_job --config config.json --entry runtime.train:run_lm` in a subprocess
(as the launcher runs it), on a toy world at scale 0.02 with a 2-layer, d_model 64 llama3 at seq_len 64.
Run: `python -m pytest tests/runtime/test_train.py -q -p no:cacheprovider` (about a minute on 2 cores).
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file

from runtime.outputs import read_done, read_metrics
from spec.model import ModelSpec

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_model_factory import hf_reference_logits  # noqa: E402  (the pure-torch HF Llama reference)

STEPS, CKPT = 60, 10
MODEL = dict(family="llama3", vocab_size=1024, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
             ffn_hidden=128, max_seq_len=64, dtype="float32", norm_eps=1e-5, qk_norm="none", rope_scaling=None,
             rope_theta=10000.0, sliding_window=None, tie_embeddings=True)


def make_job(toy: Path, *, id: str = "pretrain", kind: str = "pretrain", steps: int = STEPS, seq_len: int = 64,
             model: dict[str, Any] | None = None, init: dict[str, Any] | None = None, lr: float = 3e-3,
             weights: dict[str, Any] | None = None) -> dict[str, Any]:
    sources = {n: {"path": f"{toy.name}/{n}", "split": "train", "eval_split": "validation", "text_field": "text",
                   "hf": None, "subset": None} for n in ("arithmetic", "code", "text", "words")}
    return {
        "id": id, "kind": kind, "hash": "0f" * 32, "recipe": "tiny", "recipe_dir": str(toy.parent),
        "config": {
            "model": {**MODEL, **(model or {})}, "init": init or {"kind": "random"},
            "optim": {"lr": lr, "grad_clip": 1.0,
                      "optimizer": {"kind": "adamw", "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1},
                      "schedule": {"kind": "cosine", "warmup_steps": 3, "min_lr_ratio": 0.1}},
            "scale": {"seq_len": seq_len, "global_batch_sequences": 8, "micro_batch_size": 4, "grad_accum": 2,
                      "steps": steps, "processes": 1,
                      "parallelism": {"fsdp": 1, "tp": 1, "pp": 1, "cp": 1, "dp_replicate": 1}},
            "data": {"sources": sources, "weights": weights or {"arithmetic": 1.0}},
            "tokenizer": f"{toy.name}/tokenizer", "checkpoint_every": CKPT, "seed": 0,
            "activation_checkpointing": "none"},
    }


def start(job: dict[str, Any], out: Path, *, entry: str = "runtime.train:run_lm", **env: str) -> subprocess.Popen[str]:
    config = out.parent / f"{out.name}.config.json"
    config.write_text(json.dumps(job))
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RECIPE_")}
    environ.update(PYTHONPATH=str(REPO), RECIPE_OUTPUT_DIR=str(out), OMP_NUM_THREADS="2", **env)
    return subprocess.Popen([sys.executable, "-m", "runtime.run_job", "--config", str(config), "--entry", entry],
                            cwd=out.parent, env=environ, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def run(job: dict[str, Any], out: Path, *, entry: str = "runtime.train:run_lm",
        **env: str) -> subprocess.CompletedProcess[str]:
    proc = start(job, out, entry=entry, **env)
    output, _ = proc.communicate(timeout=240)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, output, "")
    if proc.returncode != 0:
        print(output[-4000:])
    return result


def train_losses(out: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in read_metrics(out / "metrics.jsonl") if "loss" in m}


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world") / "toy"
    subprocess.run([sys.executable, "-m", "runtime.toyworld", str(out), "--scale", "0.02"], cwd=REPO, check=True,
                   capture_output=True)
    return out


@pytest.fixture(scope="module")
def pretrained(toy: Path) -> Path:
    """One finished pretrain job (60 steps on the arithmetic source), shared by the tests below."""
    out = toy.parent / "pretrain-out"
    assert run(make_job(toy), out).returncode == 0
    return out


# --------------------------------------------------------------------------- one finished job


def test_loss_falls_on_the_arithmetic_source(pretrained: Path) -> None:
    losses = train_losses(pretrained)
    assert sorted(losses) == list(range(1, STEPS + 1))
    start_loss = sum(losses[s] for s in (1, 2, 3)) / 3
    end_loss = sum(losses[s] for s in (STEPS - 2, STEPS - 1, STEPS)) / 3
    assert start_loss > math.log(1024) - 0.5  # starts near uniform over the vocabulary
    assert end_loss < start_loss - 3.0, (start_loss, end_loss)
    metrics = read_metrics(pretrained / "metrics.jsonl")
    assert all({"lr", "grad_norm", "tokens_per_s"} <= set(m) for m in metrics if "loss" in m)


def test_done_is_written_last_with_final_loss_and_eval(pretrained: Path) -> None:
    done = read_done(pretrained)
    assert done is not None and done["step"] == STEPS and done["job"] == "pretrain"
    assert done["final_loss"] == pytest.approx(train_losses(pretrained)[STEPS])
    done_time = (pretrained / "DONE.json").stat().st_mtime
    others = [p for p in pretrained.rglob("*") if p.is_file() and p.name != "DONE.json"]
    assert others and all(p.stat().st_mtime <= done_time for p in others)


def test_held_out_bits_per_byte_for_every_source(pretrained: Path) -> None:
    evals = dict(read_done(pretrained)["eval"])
    arith = evals.pop("arith_exact_match")  # greedy answers to the toy world's held-out arithmetic, base format
    n_eval = len((pretrained.parent / "toy" / "eval" / "arith.jsonl").read_text().splitlines())
    assert arith["n"] == min(32, n_eval) and 0.0 <= arith["accuracy"] <= 1.0 and arith["examples"]
    assert set(evals) == {"arithmetic", "code", "text", "words"}
    for name, e in evals.items():
        assert math.isfinite(e["loss"]) and math.isfinite(e["bpb"]) and e["bpb"] > 0, name
        assert e["bpb"] == pytest.approx(e["loss"] * e["tokens"] / e["bytes"] / math.log(2)), name
    # trained on arithmetic only: its held-out loss is the lowest, and well below uniform
    assert evals["arithmetic"]["loss"] == min(e["loss"] for e in evals.values())
    assert evals["arithmetic"]["loss"] < math.log(1024) - 3.0
    assert read_metrics(pretrained / "metrics.jsonl")[-1]["eval"] == {**evals, "arith_exact_match": arith}


def test_hf_export_is_the_trained_model(pretrained: Path) -> None:
    hf = pretrained / "hf"
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in hf.iterdir()}
    config = json.loads((hf / "config.json").read_text())
    tensors = load_file(str(hf / "model.safetensors"))
    # the trained torchtitan model, read back from the last DCP checkpoint
    from runtime.model_factory import build_model
    model = build_model(ModelSpec(**MODEL), seed=123)
    state = model.state_dict()
    dcp.load(state, checkpoint_id=str(pretrained / "checkpoint" / f"step-{STEPS}"))
    model.load_state_dict(state)
    tokens = torch.randint(0, 1024, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf_reference_logits(tensors, config, tokens), model(tokens), rtol=1e-4, atol=1e-4)
    assert config["bos_token_id"] == 0 and config["eos_token_id"] == 1


def test_a_done_job_is_not_run_again(pretrained: Path, toy: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    from runtime.train import run_lm

    before = (pretrained / "DONE.json").read_text()
    monkeypatch.setenv("RECIPE_OUTPUT_DIR", str(pretrained))
    run_lm(make_job(toy))  # returns at once: no trainer, no process group
    assert "already done" in capsys.readouterr().out
    assert (pretrained / "DONE.json").read_text() == before


# --------------------------------------------------------------------------- failure and resume


def test_missing_producer_fails_clearly_and_writes_no_done(toy: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from runtime.outputs import MissingInputError
    from runtime.train import run_lm

    monkeypatch.delenv("RECIPE_INPUT_MIX_SOLVE", raising=False)
    monkeypatch.delenv("RECIPE_INPUT_PRETRAIN", raising=False)
    monkeypatch.setenv("RECIPE_OUTPUT_DIR", str(tmp_path / "out"))
    with pytest.raises(MissingInputError, match="RECIPE_INPUT_MIX_SOLVE"):
        run_lm(make_job(toy, weights={"from_job": "mix-solve", "file": "mix.json"}))
    with pytest.raises(MissingInputError, match="RECIPE_INPUT_PRETRAIN"):
        run_lm(make_job(toy, id="midtrain", kind="midtrain", init={"kind": "stage", "job": "pretrain"}))
    assert read_done(tmp_path / "out") is None


def test_sigkill_then_rerun_resumes_from_the_checkpoint_with_the_same_data(toy: Path, pretrained: Path) -> None:
    out = toy.parent / "killed"
    proc = start(make_job(toy), out)
    deadline = time.time() + 180
    while time.time() < deadline and max(train_losses(out), default=0) < 2 * CKPT + 2:
        assert proc.poll() is None, "the job ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    seen = max(train_losses(out))
    assert seen < STEPS and read_done(out) is None
    saved = max(int(p.name.split("-")[1]) for p in (out / "checkpoint").iterdir())
    assert saved >= 2 * CKPT and saved <= seen

    assert run(make_job(toy), out).returncode == 0
    lines = read_metrics(out / "metrics.jsonl")
    steps = [m["step"] for m in lines if "loss" in m]
    restart = next(i for i in range(1, len(steps)) if steps[i] <= steps[i - 1])
    assert steps[restart] == saved + 1  # resumed right after the last checkpoint
    assert steps[restart:] == list(range(saved + 1, STEPS + 1))
    # same data order and same state: the resumed losses are those of the uninterrupted run
    reference = train_losses(pretrained)
    resumed = {m["step"]: m["loss"] for m in lines[restart:] if "loss" in m}
    for step, loss in resumed.items():
        assert loss == pytest.approx(reference[step], abs=1e-4), step
    assert read_done(out)["final_loss"] == pytest.approx(read_done(pretrained)["final_loss"], abs=1e-4)


# --------------------------------------------------------------------------- later stages


def test_long_context_starts_from_the_parent_with_its_own_model_block(toy: Path, pretrained: Path) -> None:
    out = toy.parent / "long"
    model = dict(max_seq_len=128, rope_scaling={"kind": "yarn", "factor": 2.0, "original_max_seq_len": 64,
                                                "beta_fast": 32.0, "beta_slow": 1.0, "layers": "all"})
    job = make_job(toy, id="long-context", kind="long_context", steps=4, seq_len=128, model=model, lr=1e-4,
                   init={"kind": "stage", "job": "pretrain", "stage": "pretrain"})
    assert run(job, out, RECIPE_INPUT_PRETRAIN=str(pretrained)).returncode == 0
    first = train_losses(out)[1]
    assert first < math.log(1024) - 3.0  # the parent's weights, not a random init
    config = json.loads((out / "hf" / "config.json").read_text())
    assert config["max_position_embeddings"] == 128 and config["rope_scaling"]["rope_type"] == "yarn"


def test_a_failing_job_exits_nonzero_and_writes_no_done(toy: Path, tmp_path: Path) -> None:
    job = make_job(toy, steps=3)
    job["config"]["scale"]["seq_len"] = 128  # longer than the model's max_seq_len 64: refused
    result = run(job, tmp_path / "out")
    assert result.returncode != 0 and "max_seq_len" in result.stdout
    assert read_done(tmp_path / "out") is None


@pytest.mark.slow
def test_two_process_fsdp_matches_one_process(toy: Path) -> None:
    """scale.processes 2: run_lm starts torchrun (FSDP over gloo); same rows per step, same init: same curve."""
    curves = {}
    for n in (1, 2):
        job = make_job(toy, steps=12, weights={"arithmetic": 0.7, "text": 0.3})
        job["config"]["scale"]["processes"] = n
        job["config"]["scale"]["parallelism"]["fsdp"] = n
        out = toy.parent / f"procs-{n}"
        assert run(job, out).returncode == 0
        curves[n] = train_losses(out)
        assert read_done(out)["step"] == 12
    assert sorted(curves[2]) == list(range(1, 13))
    for step, loss in curves[1].items():
        assert curves[2][step] == pytest.approx(loss, abs=2e-3), step


def test_the_job_is_a_torchtitan_config_registry_function(toy: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from torchtitan.config import ConfigManager

    from runtime.lm_data import MixtureDataLoader
    from runtime.lm_trainer import RecipeTrainer

    (tmp_path / "config.json").write_text(json.dumps(make_job(toy, weights={"arithmetic": 3, "text": 1})))
    monkeypatch.setenv("RECIPE_JOB_CONFIG", str(tmp_path / "config.json"))
    monkeypatch.setenv("RECIPE_OUTPUT_DIR", str(tmp_path / "out"))
    config = ConfigManager().parse_args(["--module", "runtime.titan_config", "--config", "recipe_job",
                                         "--training.steps", "7"])
    assert isinstance(config, RecipeTrainer.Config) and isinstance(config.dataloader, MixtureDataLoader.Config)
    assert config.training.steps == 7 and config.training.global_batch_size == 8
    assert config.training.local_batch_size == 4 and config.checkpoint.interval == CKPT
    assert config.dataloader.weights == {"arithmetic": 0.75, "text": 0.25}
    assert config.lr_scheduler.decay_type == "cosine" and config.lr_scheduler.warmup_steps == 3
    assert config.dump_folder == str((tmp_path / "out").resolve())
