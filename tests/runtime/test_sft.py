"""Supervised fine-tuning (runtime/sft_data.py, runtime.train:run_sft) on CPU: a tiny pretrained parent (the
helpers of test_train.py, 20 steps), then a short SFT job from it on the toy world's sft split.
Run: `python -m pytest tests/runtime/test_sft.py -q -p no:cacheprovider`.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.outputs import read_done, read_metrics

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_train import REPO, make_job, run, toy, train_losses  # noqa: E402,F401 (toy: shared fixture)

SFT_STEPS = 20


@pytest.fixture(scope="module")
def tokenizer(toy: Path):
    from torchtitan.components.tokenizer import HuggingFaceTokenizer
    return HuggingFaceTokenizer(tokenizer_path=str(toy / "tokenizer"))


CONV = [{"role": "user", "content": "What is 12 + 7?"}, {"role": "assistant", "content": "Answer: 19"}]


def test_labels_mask_exactly_the_non_assistant_tokens(tokenizer) -> None:
    from runtime.sft_data import IGNORE_INDEX, SFTDataset, conversation_tokens
    from runtime.tokenizer import render_chat

    tokens, mask = conversation_tokens(tokenizer, CONV)
    assert tokens == tokenizer.encode(render_chat(CONV), add_bos=False, add_eos=False)  # the chat template
    assert tokenizer.decode([t for t, m in zip(tokens, mask) if m], skip_special_tokens=False) == "Answer: 19<|eos|>"
    assert tokenizer.decode([t for t, m in zip(tokens, mask) if not m], skip_special_tokens=False) == "<|bos|><|user|>What is 12 + 7?\n<|assistant|>"
    inputs, labels = SFTDataset([CONV], tokenizer, 64).next_example()
    assert inputs == tokens[:-1] and len(labels) == len(inputs)
    for i, label in enumerate(labels):  # label i predicts token i + 1: kept exactly where that is an assistant token
        assert label == (tokens[i + 1] if mask[i + 1] else IGNORE_INDEX)


def test_packing_keeps_conversations_intact(tokenizer) -> None:
    from runtime.sft_data import IGNORE_INDEX, SFTDataset

    convs = [[{"role": "user", "content": f"What is {i} + {i * 7}?"},
              {"role": "assistant", "content": f"{i} plus {i * 7}\nAnswer: {i * 8}"}] for i in range(1, 30)]
    ds = SFTDataset(convs, tokenizer, 96, seed=3)
    lengths = {}
    for c in convs:
        inp, _ = SFTDataset([c], tokenizer, 96).next_example()
        lengths[tuple(inp)] = len(inp)
    it = iter(ds)
    seen = 0
    for _ in range(12):
        x, labels = next(it)
        inp, pos = x["input"].tolist(), x["positions"].tolist()
        assert len(inp) == len(labels) == 96
        starts = [i for i, p in enumerate(pos) if p == 0] + [96]
        assert starts[0] == 0
        for a, b in zip(starts, starts[1:]):
            assert pos[a:b] == list(range(b - a))
            piece = tuple(inp[a:b])
            if piece in lengths:  # a whole conversation, in one row
                seen += 1
            else:  # the padding at the end of a row: pad tokens, nothing to learn
                assert b == 96 and set(piece) == {ds.pad_id} and set(labels[a:b].tolist()) == {IGNORE_INDEX}
    assert seen >= 24
    state = ds.state_dict()
    again = SFTDataset(convs, tokenizer, 96, seed=3)
    again.load_state_dict(state)
    assert next(iter(again))[0]["input"].tolist() == next(it)[0]["input"].tolist()


def test_sft_job_from_a_pretrained_parent(toy: Path) -> None:
    parent = toy.parent / "parent"
    assert run(make_job(toy, steps=20), parent).returncode == 0
    out = toy.parent / "sft"
    job = make_job(toy, id="sft", kind="sft", steps=SFT_STEPS, lr=3e-3, init={"kind": "stage", "job": "pretrain"})
    job["config"]["data"] = {"path": f"{toy.name}/sft", "split": "train", "text_field": "messages", "hf": None,
                             "subset": None}
    config = out.parent / f"{out.name}.config.json"
    config.write_text(json.dumps(job))
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RECIPE_")}
    environ.update(PYTHONPATH=str(REPO), RECIPE_OUTPUT_DIR=str(out), OMP_NUM_THREADS="2",
                   RECIPE_INPUT_PRETRAIN=str(parent))
    result = subprocess.run([sys.executable, "-m", "runtime.run_job", "--config", str(config), "--entry",
                             "runtime.train:run_sft"], cwd=out.parent, env=environ, text=True, capture_output=True,
                            timeout=240)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    losses = train_losses(out)
    assert sorted(losses) == list(range(1, SFT_STEPS + 1))
    start = sum(losses[s] for s in (1, 2, 3)) / 3
    end = sum(losses[s] for s in (SFT_STEPS - 2, SFT_STEPS - 1, SFT_STEPS))
    end /= 3
    assert start < math.log(1024) - 1.0  # the parent's weights, not a random init
    assert end < start - 0.3, (start, end)
    done = read_done(out)
    assert done["step"] == SFT_STEPS and done["kind"] == "sft"
    assert math.isfinite(done["eval"]["validation"]["loss"])
    assert 0.0 <= done["eval"]["arith_exact_match"]["accuracy"] <= 1.0
    assert (out / "hf" / "model.safetensors").is_file() and (out / "checkpoint" / f"step-{SFT_STEPS}").is_dir()
    assert read_metrics(out / "metrics.jsonl")[-1]["eval"] == done["eval"]
    done_time = (out / "DONE.json").stat().st_mtime
    assert all(p.stat().st_mtime <= done_time for p in out.rglob("*") if p.is_file() and p.name != "DONE.json")
    print(f"sft loss {start:.3f} -> {end:.3f}; eval {json.dumps(done['eval'])[:400]}; "
          f"train {done['train_seconds']}s")
