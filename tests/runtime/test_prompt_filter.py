"""The offline difficulty filter of RL prompts (runtime/rl/prompt_filter.py) and the prompt set it restricts.

The sampling here is a stand-in function (each prompt's samples solve it a set number of times); the real sidecar
path, through the trainer, is tests/runtime/test_rl.py's. Run: `python -m pytest tests/runtime/test_prompt_filter.py -q`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import pytest

from runtime.rl import prompt_filter
from runtime.rl.prompt_filter import FILTER_FILE, FilterResult, filter_prompts, load_or_filter

SAMPLES = 4


def world(solved_counts: Sequence[int]) -> tuple[list[tuple[list[int], dict[str, Any]]], Any, Any, list[int]]:
    """Prompts whose samples are right `solved_counts[i]` times of SAMPLES; the generate and score stand-ins, and
    the chunk indices generate was called with."""
    prompts = [([i + 1, 7], {"id": i, "solved": n}) for i, n in enumerate(solved_counts)]
    chunks: list[int] = []

    def generate(batch: Sequence[list[int]], chunk: int) -> list[list[list[int]]]:
        chunks.append(chunk)
        return [[[tokens[0], k] for k in range(SAMPLES)] for tokens in batch]

    def score(responses: Sequence[list[int]], rows: Sequence[Mapping[str, Any]]) -> list[float]:
        assert len(responses) == len(rows)
        return [1.0 if k < row["solved"] and prompt_id == row["id"] + 1 else 0.0
                for (prompt_id, k), row in zip(responses, rows)]

    return prompts, generate, score, chunks


def test_the_filter_keeps_the_prompts_solved_sometimes_and_counts_the_rest() -> None:
    counts = [0, 4, 2, 1, 0, 3, 4, 0]
    prompts, generate, score, _ = world(counts)
    result = filter_prompts(generate, score, prompts, samples=SAMPLES, log=lambda line: None)
    assert result.kept == [2, 3, 5]
    assert (result.always_solved, result.never_solved, result.prompts) == (2, 3, 8)
    assert result.mean_reward == pytest.approx(sum(counts) / (SAMPLES * len(counts)))
    assert result.summary()["kept_prompts"] == 3 and "kept" not in result.summary()


def test_a_model_that_solves_nothing_keeps_nothing_and_counts_no_prompt_as_solved() -> None:
    prompts, generate, score, _ = world([0, 0, 0])
    result = filter_prompts(generate, score, prompts, samples=SAMPLES, log=lambda line: None)
    assert result.kept == [] and (result.always_solved, result.never_solved) == (0, 3)


def test_the_filter_samples_in_chunks_and_refuses_a_short_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prompt_filter, "CHUNK_PROMPTS", 3)
    prompts, generate, score, chunks = world([1, 2, 3, 0, 4, 1, 2])
    result = filter_prompts(generate, score, prompts, samples=SAMPLES, log=lambda line: None)
    assert chunks == [0, 1, 2] and result.kept == [0, 1, 2, 5, 6]

    def short(batch: Sequence[list[int]], chunk: int) -> list[list[list[int]]]:
        return [[[1]] for _ in batch]  # one sample each where four were asked for

    with pytest.raises(RuntimeError, match="asked for 4 samples of 3 prompts"):
        filter_prompts(short, score, prompts, samples=SAMPLES, log=lambda line: None)
    with pytest.raises(ValueError, match="at least 2"):
        filter_prompts(generate, score, prompts, samples=1)


def test_the_result_is_saved_once_and_reused_only_for_the_same_prompts_and_samples(tmp_path: Path) -> None:
    prompts, generate, score, chunks = world([1, 4, 2])
    runs: list[FilterResult] = []

    def run() -> FilterResult:
        runs.append(filter_prompts(generate, score, prompts, samples=SAMPLES, log=lambda line: None))
        return runs[-1]

    first = load_or_filter(tmp_path, 3, SAMPLES, run)
    assert json.loads((tmp_path / FILTER_FILE).read_text())["kept"] == [0, 2] == first.kept
    again = load_or_filter(tmp_path, 3, SAMPLES, run)  # a resumed job
    assert len(runs) == 1 and again == first
    load_or_filter(tmp_path, 3, SAMPLES + 4, run)  # another sample count: sampled again
    assert len(runs) == 2
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_restricted_prompt_set_draws_only_kept_prompts_in_a_fixed_order() -> None:
    from runtime.rl.trainer import PromptSet

    rows = [{"prompt": f"q{i}"} for i in range(10)]
    full = PromptSet(rows, [[i] for i in range(10)], seed=3)
    full.batch(0, 4)  # an order made before the restriction is not reused after it
    full.restrict([1, 4, 6])
    drawn = [row["prompt"] for k in range(4) for _, row in full.batch(k, 3)]
    assert sorted(set(drawn)) == ["q1", "q4", "q6"] and all(drawn.count(q) == 4 for q in set(drawn))
    other = PromptSet(rows, [[i] for i in range(10)], seed=3)
    other.restrict([1, 4, 6])
    assert [row["prompt"] for k in range(4) for _, row in other.batch(k, 3)] == drawn  # what a resumed job draws
    with pytest.raises(ValueError, match="kept none"):
        other.restrict([])
