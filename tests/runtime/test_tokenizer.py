"""The tiny recipe's tokenizer (runtime/tokenizer.py), trained on a scale-0.01 toy world.

Needs the runtime environment (`pip install -e '.[test,runtime]'`: tokenizers, datasets, torchtitan).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tokenizers import Tokenizer

from runtime import toyworld as tw
from runtime.tokenizer import (
    CHAT_TEMPLATE, SPECIAL_TOKENS, count_tokens, iter_texts, record_text, render_chat, train_tokenizer)

SCALE = 0.01
CONVERSATION = [
    {"role": "user", "content": "What is 12 + 34?"},
    {"role": "assistant", "content": "2 + 4 = 6, write 6\n1 + 3 = 4, write 4\nAnswer: 46"},
]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("toy")
    return out, tw.build(out, seed=0, scale=SCALE, vocab_size=1024)


def test_vocab_size_is_exact(built: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    out, manifest = built
    assert Tokenizer.from_file(str(out / "tokenizer" / "tokenizer.json")).get_vocab_size() == 1024
    small = train_tokenizer(tw.tokenizer_files(out, manifest), tmp_path / "small", vocab_size=400)
    assert Tokenizer.from_file(str(small / "tokenizer.json")).get_vocab_size() == 400
    # Too little text for 1024 - 261 merges: reserved tokens fill the vocabulary up.
    tiny = tmp_path / "tiny.jsonl"
    tiny.write_text(json.dumps({"text": "one two three"}) + "\n")
    padded = Tokenizer.from_file(str(train_tokenizer([tiny], tmp_path / "padded", 1024) / "tokenizer.json"))
    assert padded.get_vocab_size() == 1024 and padded.token_to_id("<|reserved_0|>") is not None
    with pytest.raises(ValueError):
        train_tokenizer([tiny], tmp_path / "too-small", vocab_size=100)


def test_training_is_deterministic(built: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    out, manifest = built
    again = train_tokenizer(tw.tokenizer_files(out, manifest), tmp_path / "again", 1024)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (again / name).read_bytes() == (out / "tokenizer" / name).read_bytes(), name


def test_round_trip_of_every_source_and_unusual_text(built: tuple[Path, dict[str, Any]]) -> None:
    out, _ = built
    tok = Tokenizer.from_file(str(out / "tokenizer" / "tokenizer.json"))
    samples = ["", " leading and trailing  ", "tabs\tand\r\nnewlines\n\n", "é ü 日本 😀", "x" * 300]
    for name in tw.PRETRAIN_SOURCES:
        samples += list(iter_texts([out / name / "validation.jsonl"]))
    for text in samples:
        ids = tok.encode(text, add_special_tokens=False).ids
        assert tok.decode(ids, skip_special_tokens=False) == text
    assert tok.token_to_id("[UNK]") is None and None not in tok.encode("é 😀").ids


def test_digits_are_single_tokens(built: tuple[Path, dict[str, Any]]) -> None:
    out, _ = built
    tok = Tokenizer.from_file(str(out / "tokenizer" / "tokenizer.json"))
    assert tok.encode("12345").tokens == ["1", "2", "3", "4", "5"]
    # the training learned merges: common words are one token
    assert len(tok.encode(" the").ids) == 1 and len(tok.encode(" Answer").ids) <= 2


def test_special_tokens_have_distinct_ids_and_are_atomic(built: tuple[Path, dict[str, Any]]) -> None:
    out, _ = built
    tok = Tokenizer.from_file(str(out / "tokenizer" / "tokenizer.json"))
    ids = [tok.token_to_id(t) for t in SPECIAL_TOKENS]
    assert ids == [0, 1, 2, 3, 4]
    rendered = render_chat(CONVERSATION)
    encoded = tok.encode(rendered, add_special_tokens=False).ids
    assert encoded[:2] == ids[:1] + ids[3:4] and encoded[-1] == ids[1] and ids[4] in encoded
    assert tok.encode("plain text", add_special_tokens=True).ids == tok.encode("plain text", add_special_tokens=False).ids


def test_config_files_for_torchtitan_and_transformers(built: tuple[Path, dict[str, Any]]) -> None:
    out, _ = built
    config = json.loads((out / "tokenizer" / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert (config["bos_token"], config["eos_token"], config["pad_token"]) == SPECIAL_TOKENS[:3]
    assert config["model_max_length"] == 512 and config["chat_template"] == CHAT_TEMPLATE
    assert [v["content"] for v in config["added_tokens_decoder"].values()] == list(SPECIAL_TOKENS)
    special = json.loads((out / "tokenizer" / "special_tokens_map.json").read_text())
    assert special["additional_special_tokens"] == ["<|user|>", "<|assistant|>"]


def test_chat_template_renders_with_jinja() -> None:
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    # plain jinja2, and the sandboxed environment transformers and torchtitan use
    for env in (jinja2.Environment(), ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)):
        template = env.from_string(CHAT_TEMPLATE)
        text = template.render(messages=CONVERSATION)
        assert text == render_chat(CONVERSATION)
        assert text == ("<|bos|><|user|>What is 12 + 34?\n<|assistant|>2 + 4 = 6, write 6\n"
                        "1 + 3 = 4, write 4\nAnswer: 46<|eos|>")
        prompt = template.render(messages=CONVERSATION[:1], add_generation_prompt=True)
        assert prompt == "<|bos|><|user|>What is 12 + 34?\n<|assistant|>" == render_chat(CONVERSATION[:1], True)
    with pytest.raises(ValueError):
        render_chat([{"role": "system", "content": "x"}])


def test_torchtitan_loads_the_folder(built: tuple[Path, dict[str, Any]]) -> None:
    import torchtitan.components.tokenizer as titan
    out, _ = built
    tok = titan.HuggingFaceTokenizer(tokenizer_path=str(out / "tokenizer"))
    assert tok.get_vocab_size() == 1024 and (tok.bos_id, tok.eos_id) == (0, 1)
    assert tok.apply_chat_template(CONVERSATION) == render_chat(CONVERSATION)
    ids = tok.encode("Answer: 46", add_bos=True, add_eos=True)
    assert ids[0] == 0 and ids[-1] == 1 and tok.decode(ids[1:-1]) == "Answer: 46"


def test_token_counts_match_the_tokenizer(built: tuple[Path, dict[str, Any]]) -> None:
    out, manifest = built
    tok = Tokenizer.from_file(str(out / "tokenizer" / "tokenizer.json"))
    for name, entry in manifest["sets"].items():
        for split, rel in entry["files"].items():
            texts = [record_text(json.loads(line)) for line in (out / rel).read_text().splitlines()]
            expected = sum(len(tok.encode(t, add_special_tokens=False).ids) for t in texts)
            assert entry["tokens"][split] == expected == count_tokens(out / "tokenizer", [out / rel]) > 0
    assert json.loads((out / "manifest.json").read_text()) == manifest
    text_tokens = manifest["sets"]["text"]["tokens"]["train"]
    assert text_tokens == pytest.approx(4_000_000 * SCALE, rel=0.5)


def test_datasets_reads_a_source_offline(built: tuple[Path, dict[str, Any]], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    out, manifest = built
    files = {split: str(out / rel) for split, rel in manifest["sets"]["arithmetic"]["files"].items()}
    ds = datasets.load_dataset("json", data_files=files, cache_dir=str(tmp_path / "cache"))
    assert ds["train"].num_rows == manifest["sets"]["arithmetic"]["documents"]["train"]
    assert ds["validation"].column_names == ["text"] and ds["train"][0]["text"].startswith("Question: ")
    sft = datasets.load_dataset("json", data_files=str(out / "sft" / "train.jsonl"), split="train",
                                cache_dir=str(tmp_path / "cache"))
    assert sft[0]["messages"][0]["role"] == "user"


def test_tokenizer_cli(built: tuple[Path, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from runtime.tokenizer import main

    out, manifest = built
    files = [str(f) for f in tw.tokenizer_files(out, manifest)]
    assert main([str(tmp_path / "tok"), *files, "--vocab-size", "300"]) == 0
    assert "300 tokens" in capsys.readouterr().out
    assert main([str(tmp_path / "tok2"), str(tmp_path / "missing.jsonl")]) == 2
    assert main([str(tmp_path / "tok3"), *files, "--vocab-size", "10"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "missing.jsonl" in err[0] and "vocab_size" in err[1]
