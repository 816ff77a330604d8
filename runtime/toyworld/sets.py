"""Writing the toy world: held-out splits, post-training sets, the manifest (`generate`)."""
from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any, Sequence

from runtime.toyworld.settings import (EVAL_DOCS, MANIFEST_VERSION, MIN_DOCS, PLANTED_EVAL_DOCS, PLANTED_SOURCE,
                                       PRETRAIN_SOURCES, TRAIN_DOCS, VALIDATION_FRACTION, rng_for)
from runtime.toyworld.arithmetic import Draw, Problem, arithmetic_doc, question, random_problem, raw_prompt, solution
from runtime.toyworld.prose import code_doc, text_doc, words_doc, words_question


# --------------------------------------------------------------------------- post-training sets

def _eval_doc(rng: random.Random) -> tuple[str, dict[str, Any]]:
    p = random_problem(rng, 3)
    q = question(p)
    return p.expression, {"question": q, "prompt": raw_prompt(q), "answer": str(p.answer), "op": p.op,
                          "a": p.a, "b": p.b}


def plant_eval_items(train: list[dict[str, Any]], evals: Sequence[dict[str, Any]], n: int,
                     seed: int) -> list[int]:
    """Contaminate a pretraining source on purpose: the first n eval problems, worked out in the source's own
    format, put at seeded places in its train split (so that decontamination has something real to find).
    Returns the eval items planted."""
    rng = rng_for(seed, "plant", "arithmetic")
    for item in evals[:n]:
        p = Problem(item["op"], int(item["a"]), int(item["b"]))
        train.insert(rng.randrange(len(train) + 1), {"text": raw_prompt(item["question"]) + solution(p)})
    return list(range(min(n, len(evals))))


def _qa(rng: random.Random, words_fraction: float) -> tuple[str, str, str, str]:
    """(dedupe key, question, worked solution, answer): arithmetic mostly, number words sometimes."""
    if rng.random() < words_fraction:
        q, sol, n = words_question(rng)
        return q, q, sol, str(n)
    p = random_problem(rng, 4)
    return p.expression, question(p, rng), solution(p), str(p.answer)


def _sft_doc(rng: random.Random) -> tuple[str, dict[str, Any]]:
    key, q, sol, _ = _qa(rng, words_fraction=0.2)
    messages = [{"role": "user", "content": q}, {"role": "assistant", "content": sol}]
    return key, {"messages": messages}


def _prompt_doc(rng: random.Random) -> tuple[str, dict[str, Any]]:
    key, q, _, answer = _qa(rng, words_fraction=0.2)
    return key, {"prompt": q, "answer": answer}


def _flawed_solution(rng: random.Random, p: Problem) -> str:
    """A weak model's answer to p: a slip in one operand carried through the steps, or right steps and a wrong
    final line; its answer is never p's."""
    if rng.random() < 0.5:
        digits = list(str(p.b))
        i = rng.randrange(len(digits))
        digits[i] = str((int(digits[i]) + rng.randint(1, 9)) % 10)
        slipped = Problem(p.op, p.a, int("".join(digits)))
        if slipped.op != "-" or slipped.a >= slipped.b:
            flawed = solution(slipped)
            if slipped.answer != p.answer:
                return flawed
    wrong = p.answer + rng.choice((-1, 1)) * rng.choice((1, 2, 10, 100))
    return solution(p).rsplit("Answer:", 1)[0] + f"Answer: {wrong}"


def _pair_doc(rng: random.Random) -> tuple[str, dict[str, Any]]:
    p = random_problem(rng, 4)
    return p.expression, {"prompt": question(p, rng), "chosen": solution(p), "rejected": _flawed_solution(rng, p),
                          "answer": str(p.answer)}


def _rl_doc(rng: random.Random) -> tuple[str, dict[str, Any]]:
    p = random_problem(rng, 3)
    return p.expression, {"prompt": question(p, rng), "answer": str(p.answer)}


# name -> (draw one document, whether eval problems are held out of it)
SETS: dict[str, tuple[Draw, bool]] = {
    "arithmetic": (arithmetic_doc, True),
    "words": (words_doc, False),
    "code": (code_doc, False),
    "text": (text_doc, False),
    "sft": (_sft_doc, True),
    "prompts": (_prompt_doc, True),
    "rl": (_rl_doc, True),
    "pairs": (_pair_doc, True),
}


# --------------------------------------------------------------------------- generation

def draw_unique(draw: Draw, rng: random.Random, n: int, seen: set[str]) -> list[dict[str, Any]]:
    """n documents whose keys are not in `seen` (which grows); fewer if the space runs dry."""
    out: list[dict[str, Any]] = []
    attempts = 0
    while len(out) < n and attempts < 20 * n + 100:
        attempts += 1
        key, record = draw(rng)
        if key not in seen:
            seen.add(key)
            out.append(record)
    return out


def make_splits(draw: Draw, seed: int, name: str, n_train: int, n_val: int,
                exclude: set[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(validation, train) of one set: no key twice, none from `exclude`, validation drawn first."""
    seen = set(exclude)
    val = draw_unique(draw, rng_for(seed, name, "validation"), n_val, seen)
    train = draw_unique(draw, rng_for(seed, name, "train"), n_train, seen)
    return val, train


def doc_counts(scale: float) -> dict[str, tuple[int, int]]:
    """(train, validation) document counts per set at this scale."""
    counts: dict[str, tuple[int, int]] = {}
    for name, base in TRAIN_DOCS.items():
        train = max(MIN_DOCS, round(base * scale))
        counts[name] = (train, max(MIN_DOCS, round(train * VALIDATION_FRACTION)))
    return counts


def record_chars(record: dict[str, Any]) -> int:
    """Characters of a record's text: `text`, the messages' contents, or prompt/question."""
    if "text" in record:
        return len(record["text"])
    if "messages" in record:
        return sum(len(m["content"]) for m in record["messages"])
    if "chosen" in record:
        return len(record["prompt"]) + len(record["chosen"]) + len(record["rejected"])
    return len(record.get("prompt") or record.get("question") or "")


def write_jsonl(path: Path, records: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in records]
    path.write_text("".join(lines), encoding="utf-8")


def _entry(out_dir: Path, kind: str, splits: dict[str, tuple[Path, list[dict[str, Any]]]]) -> dict[str, Any]:
    return {
        "kind": kind,
        "files": {s: path.relative_to(out_dir).as_posix() for s, (path, _) in splits.items()},
        "documents": {s: len(recs) for s, (_, recs) in splits.items()},
        "characters": {s: sum(record_chars(r) for r in recs) for s, (_, recs) in splits.items()},
    }


def generate(out_dir: Path, *, seed: int = 0, scale: float = 1.0) -> dict[str, Any]:
    """Write every set and `manifest.json` under out_dir; returns the manifest (no token counts)."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0 (got {seed})")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive number (got {scale})")
    out_dir = Path(out_dir)
    counts = doc_counts(scale)
    n_eval = max(MIN_DOCS, round(EVAL_DOCS * scale))
    n_planted = max(1, round(PLANTED_EVAL_DOCS * scale))
    held_out: set[str] = set()
    evals = draw_unique(_eval_doc, rng_for(seed, "eval", "test"), n_eval, held_out)
    write_jsonl(out_dir / "eval" / "arith.jsonl", evals)
    sets: dict[str, Any] = {"eval": _entry(out_dir, "eval", {"test": (out_dir / "eval" / "arith.jsonl", evals)})}
    for name, (draw, hold_out_eval) in SETS.items():
        n_train, n_val = counts[name]
        val, train = make_splits(draw, seed, name, n_train, n_val, held_out if hold_out_eval else set())
        planted = plant_eval_items(train, evals, n_planted, seed) if name == PLANTED_SOURCE else []
        splits = {"train": (out_dir / name / "train.jsonl", train),
                  "validation": (out_dir / name / "validation.jsonl", val)}
        for path, records in splits.values():
            write_jsonl(path, records)
        sets[name] = _entry(out_dir, "pretrain" if name in PRETRAIN_SOURCES else name, splits)
        if planted:
            sets[name]["planted_eval_items"] = {"eval": planted}
    manifest = {"format_version": MANIFEST_VERSION, "generator": "runtime.toyworld",
                "seed": seed, "scale": scale, "sets": dict(sorted(sets.items()))}
    write_manifest(out_dir, manifest)
    return manifest


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    (Path(out_dir) / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


