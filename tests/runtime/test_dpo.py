"""DPO (runtime/dpo.py, runtime.train:run_dpo) on CPU: the loss arithmetic, pair tokenization, and short jobs from a
tiny pretrained parent on the toy world's preference pairs.
Run: `python -m pytest tests/runtime/test_dpo.py -q -p no:cacheprovider` (`-m slow` adds the 2-process run).
"""
from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from runtime.outputs import read_done, read_metrics

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_train import make_job, run, toy, train_losses  # noqa: E402,F401 (toy: shared fixture)

DPO_STEPS = 8
ENTRY = "runtime.train:run_dpo"


def test_dpo_loss_matches_the_formulas() -> None:
    from runtime.dpo import dpo_loss

    policy = torch.tensor([[-10.0, -20.0], [-5.0, -5.0]], dtype=torch.float64)
    reference = torch.tensor([[-12.0, -18.0], [-5.0, -5.0]], dtype=torch.float64)
    lengths = torch.tensor([[5, 10], [4, 4]])
    loss, chosen, rejected = dpo_loss(policy, reference, lengths, beta=0.1, kind="dpo")
    assert chosen.tolist() == pytest.approx([0.2, 0.0]) and rejected.tolist() == pytest.approx([-0.2, 0.0])
    assert loss.tolist() == pytest.approx([-math.log(1 / (1 + math.exp(-0.4))), math.log(2)])
    loss, chosen, rejected = dpo_loss(policy, reference, lengths, beta=0.1, kind="dpo_norm")
    assert chosen[0].item() == pytest.approx(0.1 * 2 / 5) and rejected[0].item() == pytest.approx(0.1 * -2 / 10)
    assert loss[0].item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.06))))
    with pytest.raises(ValueError, match="ipo"):
        dpo_loss(policy, reference, lengths, beta=0.1, kind="ipo")


def test_sequence_logps_sums_the_labelled_tokens_only() -> None:
    from runtime.dpo import IGNORE_INDEX, sequence_logps

    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    labels = torch.tensor([[IGNORE_INDEX, 3, 4, IGNORE_INDEX, IGNORE_INDEX], [1, 2, 3, 4, 5]])
    logps, n = sequence_logps(logits, labels)
    log_softmax = F.log_softmax(logits, dim=-1)
    assert n.tolist() == [2, 5]
    assert logps[0].item() == pytest.approx((log_softmax[0, 1, 3] + log_softmax[0, 2, 4]).item(), rel=1e-6)
    assert logps[1].item() == pytest.approx(sum(log_softmax[1, i, i + 1].item() for i in range(5)), rel=1e-6)


@pytest.fixture(scope="module")
def tokenizer(toy: Path):
    from torchtitan.components.tokenizer import HuggingFaceTokenizer
    return HuggingFaceTokenizer(tokenizer_path=str(toy / "tokenizer"))


def test_pairs_in_both_layouts_score_only_the_response(tokenizer) -> None:
    from runtime.dpo import IGNORE_INDEX, pair_conversations, tokenize_pairs

    flat = {"prompt": "What is 2 + 2?", "chosen": "Answer: 4", "rejected": "Answer: 5"}
    chat = {"chosen": [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "Answer: 4"}],
            "rejected": [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "Answer: 5"}]}
    assert pair_conversations(flat) == pair_conversations(chat)
    [((c_in, c_lab), (r_in, r_lab))] = tokenize_pairs(tokenizer, [flat], 64)
    assert tokenizer.decode([t for t in c_lab if t != IGNORE_INDEX], skip_special_tokens=False) == "Answer: 4<|eos|>"
    assert tokenizer.decode([t for t in r_lab if t != IGNORE_INDEX], skip_special_tokens=False) == "Answer: 5<|eos|>"
    assert c_in[:-3] == r_in[:-3]  # the same prompt
    with pytest.raises(ValueError, match="'rejected'"):
        pair_conversations({"prompt": "q", "chosen": "a"})


def test_dataset_yields_pairs_with_their_reference_and_resumes(tokenizer) -> None:
    from runtime.dpo import DPODataset, tokenize_pairs

    records = [{"prompt": f"What is {i} + 1?", "chosen": f"Answer: {i + 1}", "rejected": f"Answer: {i}"}
               for i in range(10)]
    pairs = tokenize_pairs(tokenizer, records, 32)
    ds = DPODataset(pairs, 32, 0, seed=1)
    with pytest.raises(RuntimeError, match="reference"):
        next(iter(ds))
    ds.reference = torch.arange(20, dtype=torch.float64).view(10, 2)
    it = iter(ds)
    first = [next(it) for _ in range(4)]
    for x, labels in first:
        assert x["input"].shape == (2, 32) and labels.shape == (2, 32) and x["positions"].shape == (2, 32)
        index = next(i for i, p in enumerate(pairs) if p[0][0] == x["input"][0, :len(p[0][0])].tolist())
        assert x["ref_logps"].tolist() == [2 * index, 2 * index + 1]
    again = DPODataset(pairs, 32, 0, seed=1)
    again.reference = ds.reference
    again.load_state_dict(ds.state_dict())
    assert torch.equal(next(iter(again))[0]["input"], next(it)[0]["input"])
    ranks = [DPODataset(pairs, 32, 0, seed=1, dp_rank=r, dp_world_size=2) for r in (0, 1)]
    for r in ranks:
        r.reference = ds.reference
    seen = [next(iter(r))[0]["input"] for r in ranks]
    assert torch.equal(seen[0], first[0][0]["input"]) and torch.equal(seen[1], first[1][0]["input"])


def dpo_job(toy: Path, *, steps: int = DPO_STEPS, loss: str = "dpo", lr: float = 1e-3) -> dict[str, Any]:
    job = make_job(toy, id="dpo", kind="dpo", steps=steps, lr=lr, init={"kind": "stage", "job": "pretrain"})
    job["config"]["data"] = {"path": f"{toy.name}/pairs", "split": "train", "text_field": None, "hf": None,
                             "subset": None}
    job["config"]["scale"].update(seq_len=64, global_batch_sequences=8, micro_batch_size=4, grad_accum=2)
    job["config"]["dpo"] = {"beta": 0.1, "loss": loss, "reference": job["config"]["init"]}
    job["config"]["checkpoint_every"] = 4
    return job


@pytest.fixture(scope="module")
def parent(toy: Path) -> Path:
    out = toy.parent / "dpo-parent"
    assert run(make_job(toy, steps=30), out).returncode == 0
    return out


@pytest.fixture(scope="module")
def dpo_run(toy: Path, parent: Path) -> Path:
    out = toy.parent / "dpo"
    result = run(dpo_job(toy), out, entry=ENTRY, RECIPE_INPUT_PRETRAIN=str(parent))
    assert result.returncode == 0, result.stdout[-4000:]
    return out


def test_first_step_is_log_two_because_the_reference_is_the_start(dpo_run: Path) -> None:
    losses = train_losses(dpo_run)
    assert sorted(losses) == list(range(1, DPO_STEPS + 1))
    assert losses[1] == pytest.approx(math.log(2), abs=1e-5)  # policy == frozen reference before any update
    assert losses[DPO_STEPS] < losses[1]


def test_reward_metrics_per_step_and_on_held_out_pairs(dpo_run: Path) -> None:
    lines = [m for m in read_metrics(dpo_run / "metrics.jsonl") if "loss" in m]
    assert lines[0]["reward_accuracy"] == 0.0 and lines[0]["reward_margin"] == pytest.approx(0.0, abs=1e-6)
    assert lines[-1]["reward_margin"] > 0
    done = read_done(dpo_run)
    held_out = done["eval"]["held_out_pairs"]
    assert held_out["pairs"] > 0 and held_out["reward_accuracy"] > 0.5 and held_out["reward_margin"] > 0
    assert 0.0 <= done["eval"]["arith_exact_match"]["accuracy"] <= 1.0
    assert done["dpo"]["loss"] == "dpo" and (dpo_run / "hf" / "model.safetensors").is_file()
    print(f"dpo loss {train_losses(dpo_run)[1]:.4f} -> {done['final_loss']:.4f}; held-out {held_out}")


def test_resumed_job_keeps_the_reference_of_the_start(toy: Path, parent: Path, dpo_run: Path) -> None:
    """Rerun from the step-4 checkpoint: the reference is recomputed from the `from` model, not from the restored
    weights, so steps 5.. repeat the first run's losses."""
    out = toy.parent / "dpo-resumed"
    shutil.copytree(dpo_run, out)
    for name in ("DONE.json", "hf", "metrics.jsonl"):
        target = out / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    shutil.rmtree(out / "checkpoint" / f"step-{DPO_STEPS}")
    result = run(dpo_job(toy), out, entry=ENTRY, RECIPE_INPUT_PRETRAIN=str(parent))
    assert result.returncode == 0, result.stdout[-4000:]
    first, resumed = train_losses(dpo_run), train_losses(out)
    assert sorted(resumed) == list(range(5, DPO_STEPS + 1))
    for step, loss in resumed.items():
        assert loss == pytest.approx(first[step], abs=1e-5), step


def test_length_normalised_variant_trains(toy: Path, parent: Path) -> None:
    out = toy.parent / "dpo-norm"
    job = dpo_job(toy, steps=4, loss="dpo_norm")
    job["config"]["dpo"]["beta"] = 5.0
    result = run(job, out, entry=ENTRY, RECIPE_INPUT_PRETRAIN=str(parent))
    assert result.returncode == 0, result.stdout[-4000:]
    losses = train_losses(out)
    assert losses[1] == pytest.approx(math.log(2), abs=1e-5) and losses[4] < losses[1]


def test_dpo_without_a_from_model_is_refused(toy: Path, tmp_path: Path) -> None:
    job = dpo_job(toy)
    job["config"]["init"] = job["config"]["dpo"]["reference"] = {"kind": "random"}
    result = run(job, tmp_path / "out", entry=ENTRY)
    assert result.returncode != 0 and "DPO needs a `from` model" in result.stdout
    assert not (tmp_path / "out" / "DONE.json").exists()


@pytest.mark.slow
def test_two_process_dpo_matches_one_process(toy: Path, parent: Path) -> None:
    """The reference is scored in shares across ranks and summed; step metrics are all-reduced."""
    curves = {}
    for n in (1, 2):
        job = dpo_job(toy, steps=4)
        job["config"]["scale"]["processes"] = n
        job["config"]["scale"]["parallelism"]["fsdp"] = n
        out = toy.parent / f"dpo-procs-{n}"
        result = run(job, out, entry=ENTRY, RECIPE_INPUT_PRETRAIN=str(parent))
        assert result.returncode == 0, result.stdout[-4000:]
        curves[n] = [m for m in read_metrics(out / "metrics.jsonl") if "loss" in m]
    assert len(curves[2]) == 4
    for one, two in zip(curves[1], curves[2]):
        assert two["loss"] == pytest.approx(one["loss"], abs=2e-3)
        assert two["reward_accuracy"] == pytest.approx(one["reward_accuracy"])
