"""The toy world generator (runtime/toyworld.py): deterministic, held-out splits, correct answers.

Everything here runs at scale 0.01 and needs only the standard library, except the CLI's full run
(it trains the tokenizer, so it needs `tokenizers`). Tokenizer checks: test_tokenizer.py.
"""
from __future__ import annotations

import ast
import contextlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import subprocess_env
from runtime import toyworld as tw

SCALE = 0.01
POST_SETS = ("sft", "prompts", "rl", "pairs")
ALL_SETS = tw.PRETRAIN_SOURCES + POST_SETS

# An independent reading of English number words (the generator's writer is not reused).
_UNITS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()) if i >= 2}
_EXPR = re.compile(r"(\d+) ([-+*]) (\d+)")


def parse_words(text: str) -> int:
    total, current = 0, 0
    for word in text.lower().replace("-", " ").split():
        if word in _UNITS:
            current += _UNITS[word]
        elif word in _TENS:
            current += _TENS[word]
        elif word == "hundred":
            current *= 100
        elif word in ("thousand", "million"):
            total += current * (1000 if word == "thousand" else 10**6)
            current = 0
        else:
            raise ValueError(f"not a number word: {word!r}")
    return total + current


def compute(a: str, op: str, b: str) -> int:
    x, y = int(a), int(b)
    return x + y if op == "+" else x - y if op == "-" else x * y


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def final_answer(solution: str) -> str:
    last = solution.splitlines()[-1]
    assert last.startswith("Answer: "), solution
    return last.removeprefix("Answer: ")


def question_answer(question: str) -> int:
    """The true answer of a generated question, worked out here."""
    m = _EXPR.search(question)
    if m:
        return compute(*m.groups())
    m = re.fullmatch(r"What number is (.+)\?", question)
    if m:
        return parse_words(m.group(1))
    m = re.fullmatch(r"What is (.+) plus (.+)\?", question)
    assert m, question
    return parse_words(m.group(1)) + parse_words(m.group(2))


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("toy")
    return out, tw.generate(out, seed=0, scale=SCALE)


def test_same_seed_same_bytes_other_seed_differs(world: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    out, _ = world
    tw.generate(tmp_path / "again", seed=0, scale=SCALE)
    tw.generate(tmp_path / "other", seed=1, scale=SCALE)
    first, again, other = tree_bytes(out), tree_bytes(tmp_path / "again"), tree_bytes(tmp_path / "other")
    assert len(first) == 2 * len(ALL_SETS) + 2 and first == again  # train + validation per set, eval, manifest
    for name in ALL_SETS:
        assert first[f"{name}/train.jsonl"] != other[f"{name}/train.jsonl"], name
    assert first["eval/arith.jsonl"] != other["eval/arith.jsonl"]


def test_layout_manifest_and_sizes(world: tuple[Path, dict[str, Any]]) -> None:
    out, manifest = world
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert (manifest["seed"], manifest["scale"]) == (0, SCALE)
    assert set(manifest["sets"]) == set(ALL_SETS) | {"eval"}
    for name, entry in manifest["sets"].items():
        for split, rel in entry["files"].items():
            records = read(out / rel)
            assert len(records) == entry["documents"][split] >= tw.MIN_DOCS, (name, split)
            assert entry["characters"][split] == sum(tw.record_chars(r) for r in records) > 0
    counts = tw.doc_counts(1.0)
    for name, (train, val) in counts.items():
        assert 0.015 <= val / train <= 0.025, name
    assert tw.doc_counts(SCALE)["text"][0] == round(tw.TRAIN_DOCS["text"] * SCALE)


def test_validation_never_shares_a_document_with_train(world: tuple[Path, dict[str, Any]]) -> None:
    out, _ = world
    for name in ALL_SETS:
        train = (out / name / "train.jsonl").read_text().splitlines()
        val = (out / name / "validation.jsonl").read_text().splitlines()
        assert val and not set(val) & set(train), name
        assert len(set(train)) == len(train), f"{name}: duplicate train documents"


def _problems(records: list[dict[str, Any]]) -> set[tuple[str, ...]]:
    texts = [r.get("text") or r.get("prompt") or r.get("question") or r["messages"][0]["content"] for r in records]
    return {m.groups() for t in texts if (m := _EXPR.search(t))}


def test_eval_problems_are_held_out_of_every_other_set(world: tuple[Path, dict[str, Any]]) -> None:
    out, _ = world
    evals = _problems(read(out / "eval" / "arith.jsonl"))
    assert len(evals) == len(read(out / "eval" / "arith.jsonl"))
    for name in ("arithmetic",) + POST_SETS:
        for split in ("train", "validation"):
            if (name, split) == ("arithmetic", "train"):
                continue  # contaminated on purpose: below
            assert not evals & _problems(read(out / name / f"{split}.jsonl")), (name, split)


def test_planted_eval_problems_are_exactly_the_ones_the_manifest_names(world: tuple[Path, dict[str, Any]]) -> None:
    out, manifest = world
    items = read(out / "eval" / "arith.jsonl")
    planted = manifest["sets"]["arithmetic"]["planted_eval_items"]["eval"]
    assert planted and _problems([items[i] for i in planted]) == _problems(items) & _problems(
        read(out / "arithmetic" / "train.jsonl"))
    assert "planted_eval_items" not in manifest["sets"]["text"]


def _check_steps(text: str) -> None:
    """Every equation line is true, and the written digits spell the answer."""
    for line in text.splitlines():
        m = re.match(r"^(-?\d+(?: [-+*] \d+)*) = (-?\d+)", line)
        if m:
            assert eval(m.group(1)) == int(m.group(2)), line  # digits and + - * only
    written = re.findall(r"write (?:the carry )?(\d)", text)
    if written:
        assert str(int("".join(reversed(written)))) == final_answer(text), text


def test_arithmetic_documents_are_correct(world: tuple[Path, dict[str, Any]]) -> None:
    out, _ = world
    ops = set()
    for split in ("train", "validation"):
        for record in read(out / "arithmetic" / f"{split}.jsonl"):
            text = record["text"]
            first = text.splitlines()[0]
            assert first.startswith("Question: "), text
            a, op, b = _EXPR.search(first).groups()
            ops.add(op)
            assert final_answer(text) == str(compute(a, op, b)), text
            _check_steps(text)
    assert ops == {"+", "-", "*"}


def test_worked_solutions_catch_a_wrong_step() -> None:
    good = tw.solution(tw.Problem("+", 975, 57))
    _check_steps(good)
    with pytest.raises(AssertionError):
        _check_steps(good.replace("7 + 5 + 1 = 13", "7 + 5 + 1 = 14"))
    assert final_answer(good) == "1032"
    assert final_answer(tw.solution(tw.Problem("-", 1000, 1))) == "999"
    assert final_answer(tw.solution(tw.Problem("*", 347, 26))) == "9022"


def test_sft_messages_are_well_formed_and_correct(world: tuple[Path, dict[str, Any]]) -> None:
    out, _ = world
    kinds = set()
    for split in ("train", "validation"):
        for record in read(out / "sft" / f"{split}.jsonl"):
            user, assistant = record["messages"]
            assert list(record) == ["messages"] and user["role"] == "user" and assistant["role"] == "assistant"
            assert set(user) == set(assistant) == {"role", "content"}
            assert user["content"] and assistant["content"]
            assert final_answer(assistant["content"]) == str(question_answer(user["content"])), record
            _check_steps(assistant["content"])
            kinds.add("arith" if _EXPR.search(user["content"]) else "words")
    assert kinds == {"arith", "words"}


def test_rl_prompts_and_eval_answers_are_correct(world: tuple[Path, dict[str, Any]]) -> None:
    out, _ = world
    for name in ("rl", "prompts"):
        for split in ("train", "validation"):
            for record in read(out / name / f"{split}.jsonl"):
                assert set(record) == {"prompt", "answer"}
                assert record["answer"] == str(question_answer(record["prompt"])), record
                if name == "rl":
                    assert _EXPR.search(record["prompt"]), "rl prompts are verifiable arithmetic"
    for record in read(out / "eval" / "arith.jsonl"):
        assert record["answer"] == str(question_answer(record["question"]))
        assert record["prompt"] == f"Question: {record['question']}\n"
        assert record["op"] in record["question"]


def test_preference_pairs_prefer_the_right_answer(world: tuple[Path, dict[str, Any]]) -> None:
    out, _ = world
    for split in ("train", "validation"):
        records = read(out / "pairs" / f"{split}.jsonl")
        assert records
        for record in records:
            assert set(record) == {"prompt", "chosen", "rejected", "answer"}
            assert record["answer"] == str(question_answer(record["prompt"])), record
            assert final_answer(record["chosen"]) == record["answer"], record
            _check_steps(record["chosen"])
            assert final_answer(record["rejected"]) != record["answer"], record
            assert record["rejected"].splitlines()[-1].startswith("Answer: ")


def test_words_documents_are_correct(world: tuple[Path, dict[str, Any]]) -> None:
    out, _ = world
    checked = 0
    for record in read(out / "words" / "train.jsonl"):
        for line in record["text"].splitlines():
            if m := re.fullmatch(r"(\d+) is (.+)\.", line):
                assert parse_words(m.group(2)) == int(m.group(1)), line
            elif m := re.fullmatch(r"(.+) is written as (\d+)\.", line):
                assert parse_words(m.group(1)) == int(m.group(2)), line
            elif m := re.fullmatch(r"There are (.+?) \w+\. Add (.+?) more and there are (.+?) \w+\.", line):
                assert parse_words(m.group(1)) + parse_words(m.group(2)) == parse_words(m.group(3)), line
            elif m := re.fullmatch(r"Count from .+?: (.+)\.", line):
                values = [parse_words(w) for w in m.group(1).split(", ")]
                assert values == list(range(values[0], values[0] + len(values))), line
            else:
                continue
            checked += 1
    assert checked > 100


def test_number_words() -> None:
    cases = {0: "zero", 7: "seven", 13: "thirteen", 20: "twenty", 21: "twenty-one", 100: "one hundred",
             412: "four hundred twelve", 1000: "one thousand", 1001: "one thousand one",
             345_612: "three hundred forty-five thousand six hundred twelve", 2_000_005: "two million five"}
    for n, words in cases.items():
        assert tw.number_to_words(n) == words
    for n in list(range(0, 2100)) + list(range(2100, 10**9, 9_876_543)):
        assert parse_words(tw.number_to_words(n)) == n
    with pytest.raises(ValueError):
        tw.number_to_words(-1)


def test_code_documents_parse_and_print_what_they_say(world: tuple[Path, dict[str, Any]]) -> None:
    out, _ = world
    for record in read(out / "code" / "train.jsonl"):
        text = record["text"]
        ast.parse(text)
        expected = [line.split("  # ", 1)[1] for line in text.splitlines() if line.startswith("print(")]
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            exec(compile(text, "<toy code>", "exec"), {})  # our own generated code
        assert buffer.getvalue().splitlines() == expected, text


def test_text_documents_are_simple_english(world: tuple[Path, dict[str, Any]]) -> None:
    out, _ = world
    records = read(out / "text" / "train.jsonl")
    for record in records:
        text = record["text"]
        assert text.isascii() and text[0].isupper() and text.endswith(".")
        assert not re.search(r"\ba [aeiou]", text), text
    words = {w for r in records for w in re.findall(r"[a-z]+", r["text"].lower())}
    assert 100 < len(words) < 1000


def test_generate_rejects_bad_arguments(tmp_path: Path) -> None:
    for kwargs in ({"seed": -1}, {"scale": 0.0}, {"scale": float("nan")}, {"scale": -1.0}):
        with pytest.raises(ValueError):
            tw.generate(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("args, message", [
    (["--scale", "0"], "--scale"),
    (["--seed", "-3"], "--seed"),
    (["--vocab-size", "100"], "--vocab-size"),
    (["--scale", "abc"], "--scale"),
    (["--frobnicate"], "unrecognized"),
    ([], "out_dir"),
])
def test_cli_bad_arguments_are_one_line_exit_2(args: list[str], message: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    argv = ([str(tmp_path / "out")] if args else []) + args
    with pytest.raises(SystemExit) as exc:
        tw.main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_cli_out_dir_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(SystemExit) as exc:
        tw.main([str(target)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "not a folder" in err and len(err.strip().splitlines()) == 1


def test_cli_builds_everything_and_counts_tokens(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert tw.main([str(tmp_path), "--scale", str(SCALE), "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["seed"] == 3 and manifest["tokenizer"] == {"path": "tokenizer", "vocab_size": 1024}
    for name, entry in manifest["sets"].items():
        for split, tokens in entry["tokens"].items():
            assert 0 < tokens < entry["characters"][split], (name, split)
            assert re.search(rf"^{name}\s+{split}\s+[\d,]+\s+[\d,]+\s+[\d,]+$", printed, re.M), (name, split)
    assert {p.name for p in (tmp_path / "tokenizer").iterdir()} == {
        "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}


def test_splits_stay_disjoint_when_the_space_is_small() -> None:
    def digit(rng: Any) -> tuple[str, dict[str, Any]]:
        key = str(rng.randint(0, 9))
        return key, {"text": key}

    val, train = tw.make_splits(digit, 0, "text", n_train=20, n_val=3, exclude={"0"})
    val_keys, train_keys = [r["text"] for r in val], [r["text"] for r in train]
    assert len(val_keys) == 3 and len(train_keys) == 6  # the space ran dry: 10 keys, 1 excluded
    assert sorted(val_keys + train_keys) == [str(k) for k in range(1, 10)]


def test_cli_unwritable_out_dir_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert tw.main([str(blocker / "sub"), "--scale", str(SCALE)]) == 2
    err = capsys.readouterr().err
    assert "error" in err and len(err.strip().splitlines()) == 1, err


def test_generator_and_tokenizer_never_import_torch(tmp_path: Path) -> None:
    modules = ["runtime.toyworld"] + (["runtime.tokenizer"] if _has("tokenizers") else [])
    probe = ("import importlib, json, sys\n"
             f"for m in {modules!r}: importlib.import_module(m)\n"
             "from runtime.toyworld import generate\n"
             f"generate(__import__('pathlib').Path({str(tmp_path)!r}), scale=0.001)\n"
             "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'datasets', 'numpy'))))")
    proc = subprocess.run([sys.executable, "-c", probe], env=subprocess_env(), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []
    assert (tmp_path / "manifest.json").is_file()


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
