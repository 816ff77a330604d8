"""The LM data pipeline (runtime/lm_data.py), held-out scoring (runtime/lm_eval.py) and outputs (runtime/outputs.py).

In-process and fast (no trainer): a toy world at scale 0.02 and its tokenizer, built once per module.
Run: `python -m pytest tests/runtime/test_lm_data.py -q -p no:cacheprovider`.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from runtime import lm_data
from runtime.lm_data import MixtureDataLoader, MixtureDataset, resolve_sources, resolve_weights, source_texts
from runtime.outputs import MissingInputError, atomic_write_json, input_env_var, output_dir, read_done, write_done

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("arithmetic", "code", "text", "words")


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("toy")
    subprocess.run([sys.executable, "-m", "runtime.toyworld", str(out), "--scale", "0.02"], cwd=REPO, check=True,
                   capture_output=True)
    return out


@pytest.fixture(scope="module")
def tokenizer(toy: Path) -> Any:
    from torchtitan.components.tokenizer import HuggingFaceTokenizer
    return HuggingFaceTokenizer.Config().build(tokenizer_path=str(toy / "tokenizer"))


@pytest.fixture(scope="module")
def texts(toy: Path) -> dict[str, list[str]]:
    return {name: source_texts({"path": str(toy / name)}) for name in SOURCES}


def make_job(recipe_dir: str, weights: dict[str, Any], **extra: Any) -> dict[str, Any]:
    sources = {n: {"path": f"toy/{n}", "split": "train", "eval_split": "validation", "text_field": "text"}
               for n in SOURCES}
    return {"id": "pretrain", "kind": "pretrain", "hash": "ab" * 32, "recipe": "r", "recipe_dir": recipe_dir,
            "config": {"data": {"sources": sources, "weights": weights}, **extra}}


# --------------------------------------------------------------------------- the mixture


def test_mixture_draws_documents_by_weight(texts: dict[str, list[str]], tokenizer: Any) -> None:
    weights = {"arithmetic": 0.5, "code": 0.1, "text": 0.3, "words": 0.1}
    ds = MixtureDataset(texts, weights, tokenizer, 64, seed=3)
    n = 4000
    for _ in range(n):
        ds.next_document()
    for name, w in weights.items():
        tolerance = 4 * math.sqrt(w * (1 - w) / n)  # 4 sigma of a binomial share
        assert abs(ds.doc_counts[name] / n - w) < tolerance, (name, ds.doc_counts)


def test_zero_weight_sources_are_never_drawn(texts: dict[str, list[str]], tokenizer: Any) -> None:
    ds = MixtureDataset(texts, {"arithmetic": 1.0, "code": 0.0}, tokenizer, 64)
    assert {ds.next_document()[0] for _ in range(200)} == {"arithmetic"}


def test_each_source_is_read_whole_before_repeating(texts: dict[str, list[str]], tokenizer: Any) -> None:
    ds = MixtureDataset(texts, {"code": 1.0}, tokenizer, 64)
    first_epoch = [ds.next_document()[1] for _ in range(len(texts["code"]))]
    assert sorted(first_epoch) == sorted(texts["code"])
    second_epoch = [ds.next_document()[1] for _ in range(len(texts["code"]))]
    assert sorted(second_epoch) == sorted(texts["code"]) and second_epoch != first_epoch  # reshuffled


def test_packing_keeps_document_boundaries(texts: dict[str, list[str]], tokenizer: Any) -> None:
    seq_len = 64
    ds = MixtureDataset(texts, {"arithmetic": 0.5, "text": 0.5}, tokenizer, seq_len, seed=1)
    rows = [row for _, row in zip(range(20), iter(ds))]
    bos, eos = tokenizer.bos_id, tokenizer.eos_id
    inputs = torch.cat([r[0]["input"] for r in rows])
    labels = torch.cat([r[1] for r in rows])
    for x, y in rows:
        assert x["input"].shape == x["positions"].shape == y.shape == (seq_len,)
        assert x["positions"][0] == 0
        # a new document (its bos) always starts at position 0, and positions count up inside a document
        assert torch.all(x["positions"][x["input"] == bos] == 0)
        steps = x["positions"][1:] - x["positions"][:-1]
        assert torch.all((steps == 1) | (x["positions"][1:] == 0))
    # inputs/labels are each document shifted by one: a label is the next input, except at document ends,
    # where the label is eos and the next input is the next document's bos (never predicted across documents)
    same = labels[:-1] == inputs[1:]
    assert torch.all(same | ((labels[:-1] == eos) & (inputs[1:] == bos)))
    assert (labels == eos).sum() >= 5 and not torch.any(labels == bos)


def test_the_stream_is_deterministic_in_the_seed(texts: dict[str, list[str]], tokenizer: Any) -> None:
    def first_rows(seed: int) -> torch.Tensor:
        ds = MixtureDataset(texts, {"arithmetic": 0.5, "words": 0.5}, tokenizer, 32, seed=seed)
        return torch.stack([x["input"] for (x, _), _ in zip(iter(ds), range(12))])

    assert torch.equal(first_rows(0), first_rows(0))
    assert not torch.equal(first_rows(0), first_rows(1))


def test_dataloader_state_resumes_the_same_stream(toy: Path, tokenizer: Any) -> None:
    config = MixtureDataLoader.Config(sources={n: {"path": str(toy / n)} for n in SOURCES},
                                      weights={"arithmetic": 0.6, "text": 0.4}, seed=5)

    def build() -> Any:
        return config.build(dp_world_size=1, dp_rank=0, tokenizer=tokenizer, seq_len=48, local_batch_size=4,
                            snapshot_every_n_steps=1)

    reference = [x["input"] for (x, _), _ in zip(iter(build()), range(10))]
    first = build()
    it = iter(first)
    for _ in range(4):
        next(it)
    state = first.state_dict()
    resumed = build()
    resumed.load_state_dict(state)
    again = [x["input"] for (x, _), _ in zip(iter(resumed), range(6))]
    assert all(torch.equal(a, b) for a, b in zip(again, reference[4:]))


# --------------------------------------------------------------------------- paths and weights


def test_paths_resolve_against_recipe_dir_relative_to_the_plan_folder(tmp_path: Path, monkeypatch: Any) -> None:
    job_dir = tmp_path / "build" / "r" / "jobs" / "pretrain"
    job_dir.mkdir(parents=True)
    monkeypatch.delenv("RECIPE_RECIPE_DIR", raising=False)
    monkeypatch.setenv("RECIPE_JOB_DIR", str(job_dir))
    job = make_job("../../recipes", {"text": 1.0})
    assert lm_data.recipe_root(job) == (tmp_path / "recipes").resolve()
    assert resolve_sources(job)["text"]["path"] == str((tmp_path / "recipes" / "toy" / "text").resolve())
    monkeypatch.setenv("RECIPE_RECIPE_DIR", str(tmp_path / "elsewhere"))  # what `recipe launch` sets
    assert lm_data.recipe_root(job) == (tmp_path / "elsewhere").resolve()


def test_weights_are_normalised_and_checked() -> None:
    assert resolve_weights(make_job("/x", {"text": 3, "code": 1, "words": 0})) == {"code": 0.25, "text": 0.75}
    with pytest.raises(ValueError, match="unknown sources"):
        resolve_weights(make_job("/x", {"nope": 1.0}))


def test_weights_from_the_producer_job(tmp_path: Path, monkeypatch: Any) -> None:
    job = make_job("/x", {"from_job": "mix-solve", "file": "mix.json"})
    monkeypatch.delenv("RECIPE_INPUT_MIX_SOLVE", raising=False)
    with pytest.raises(MissingInputError, match="RECIPE_INPUT_MIX_SOLVE"):
        resolve_weights(job)
    atomic_write_json(tmp_path / "mix.json", {"weights": {"arithmetic": 2, "text": 2}})
    monkeypatch.setenv(input_env_var("mix-solve"), str(tmp_path))
    assert resolve_weights(job) == {"arithmetic": 0.5, "text": 0.5}


# --------------------------------------------------------------------------- outputs


def test_output_dir_default_and_env(tmp_path: Path, monkeypatch: Any) -> None:
    job = make_job("/x", {})
    monkeypatch.delenv("RECIPE_OUTPUT_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert output_dir(job) == tmp_path.resolve() / "runs" / "r" / f"pretrain-{'ab' * 6}"
    monkeypatch.setenv("RECIPE_OUTPUT_DIR", str(tmp_path / "o"))
    assert output_dir(job) == (tmp_path / "o").resolve()


def test_done_marker_is_atomic_json(tmp_path: Path) -> None:
    assert read_done(tmp_path) is None
    write_done(tmp_path, {"final_loss": 1.5, "bad": float("nan")})
    assert read_done(tmp_path) == {"final_loss": 1.5, "bad": None}
    assert [p.name for p in tmp_path.iterdir()] == ["DONE.json"]  # no temp file left behind


# --------------------------------------------------------------------------- held-out scoring


def test_bits_per_byte_is_the_loss_in_bits_per_byte(texts: dict[str, list[str]], tokenizer: Any) -> None:
    from runtime.lm_eval import evaluate_texts
    from runtime.model_factory import build_model
    from spec.model import ModelSpec

    spec = ModelSpec(family="llama3", vocab_size=1024, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                     ffn_hidden=128, max_seq_len=64, dtype="float32")
    model = build_model(spec, seed=0)
    docs = texts["arithmetic"][:6]
    result = evaluate_texts(model, tokenizer, docs, 64, batch_size=4)
    assert result["docs"] == 6 and result["bytes"] == sum(len(d.encode()) for d in docs)
    assert math.isfinite(result["loss"]) and math.isfinite(result["bpb"]) and result["bpb"] > 0
    assert result["loss"] == pytest.approx(math.log(1024), rel=0.1)  # an untrained model is near uniform
    assert result["bpb"] == pytest.approx(result["loss"] * result["tokens"] / result["bytes"] / math.log(2))
    # batching (padding) does not change the numbers
    assert evaluate_texts(model, tokenizer, docs, 64, batch_size=1)["loss"] == pytest.approx(result["loss"], rel=1e-5)


def test_data_parallel_ranks_split_the_same_global_stream(texts: dict[str, list[str]], tokenizer: Any) -> None:
    def rows(rank: int, world: int, n: int) -> list[torch.Tensor]:
        ds = MixtureDataset(texts, {"arithmetic": 0.5, "text": 0.5}, tokenizer, 32, seed=2, dp_rank=rank,
                            dp_world_size=world)
        return [x["input"] for (x, _), _ in zip(iter(ds), range(n))]

    single, rank0, rank1 = rows(0, 1, 8), rows(0, 2, 4), rows(1, 2, 4)
    assert all(torch.equal(a, b) for a, b in zip(single[0::2], rank0))
    assert all(torch.equal(a, b) for a, b in zip(single[1::2], rank1))


# --------------------------------------------------------------------------- trainer config pieces


@pytest.mark.parametrize("kind, expected", [
    # lr of each of 10 steps; 2 warmup steps, min_lr_ratio 0.1, decay_fraction 0.2 (wsd). torchtitan's schedule
    # holds the peak one extra step after warmup (its "virtual last step") and ends just above the minimum.
    ("constant", [0.5, 1, 1, 1, 1, 1, 1, 1, 1, 1]),
    ("wsd", [0.5, 1, 1, 1, 1, 1, 1, 1, 1, "decay"]),
    ("linear", [0.5, 1, 1, "decay", "decay", "decay", "decay", "decay", "decay", "decay"]),
    ("cosine", [0.5, 1, 1, "decay", "decay", "decay", "decay", "decay", "decay", "decay"]),
])
def test_lr_schedules(kind: str, expected: list[Any]) -> None:
    from torchtitan.components.optimizer import OptimizersContainer

    from runtime.titan_config import lr_scheduler_config, optimizer_config

    optim = {"lr": 1.0, "optimizer": {"kind": "adamw", "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1},
             "schedule": {"kind": kind, "warmup_steps": 2, "min_lr_ratio": 0.1, "decay_fraction": 0.2}}
    model = torch.nn.Linear(2, 2)
    optimizers = optimizer_config(optim, cuda=False).build(model_parts=[model])
    assert isinstance(optimizers, OptimizersContainer)
    group = optimizers.optimizers[0].param_groups[0]
    assert (group["betas"], group["eps"], group["weight_decay"]) == ((0.9, 0.95), 1e-8, 0.1)
    schedulers = lr_scheduler_config(optim).build(optimizers=optimizers, training_steps=10)
    lrs = []
    for _ in range(10):
        lrs.append(schedulers.schedulers[0].get_last_lr()[0])
        optimizers.step()
        schedulers.step()
    for lr, want in zip(lrs, expected):
        if want == "decay":
            assert 0.1 - 1e-9 <= lr < 1.0
        else:
            assert lr == pytest.approx(want)
    decaying = [lr for lr, want in zip(lrs, expected) if want == "decay"]
    assert decaying == sorted(decaying, reverse=True)


def test_cpu_compat_includes_the_trainer_patches() -> None:
    from runtime.cpu_compat import apply_cpu_compat

    if torch.cuda.is_available():
        pytest.skip("the CPU patches are no-ops with CUDA")
    assert {"eager_block_mask", "pg_timeouts_barrier", "device_type"} <= set(apply_cpu_compat())
    import torchtitan.models.common.decoder as decoder
    assert decoder.create_attention_mask.__wrapped__ is not decoder.create_attention_mask


def test_metrics_reader_skips_a_line_cut_short(tmp_path: Path) -> None:
    from runtime.outputs import MetricsWriter, read_metrics

    writer = MetricsWriter(tmp_path / "metrics.jsonl")
    writer.write({"step": 1, "loss": 2.0})
    writer._file.write('{"step": 2, "lo')  # killed mid-line
    writer.close()
    writer = MetricsWriter(tmp_path / "metrics.jsonl")  # the rerun
    writer.write({"step": 2, "loss": 1.5})
    writer.close()
    assert read_metrics(tmp_path / "metrics.jsonl") == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
