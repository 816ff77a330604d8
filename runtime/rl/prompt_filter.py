"""Offline difficulty filtering of RL prompts (Olmo 3 filters its RL prompts by the starting model's pass rate).

Before the first RL step the starting model samples every prompt `samples_per_prompt` times through the sidecar, at
the rollout temperature and response budget; the samples are scored by the stage's verifiers. A prompt whose samples
all get the same reward (always solved, or never) would give a GRPO group without reward variance, which carries no
gradient: it is left out. What is kept is the prompts the starting model solves sometimes.

Why: with active sampling the rollout loop already drops such groups, but it pays for generating them first. On the
tiny recipe three groups in four were all wrong or all right, and a step drew about 4.5 batches of prompts to find
one batch of informative groups.

When no prompt is kept (a starting model that solves nothing, as in tests with a random-init model) the trainer
warns and trains on every prompt, as it would without the filter; active sampling then finds what signal there is.

The result (kept prompt indices and counts) is written to `prompt-filter.json` in the trainer's output folder before
the first step, so a resumed job trains on the same prompts without sampling them again. The random-reward control
filters with the real verifiers too, so that both runs train on the same prompt set.

    result = filter_prompts(generate, score, prompts, samples=8)   # prompts: [(tokens, row)]
    kept = load_or_filter(folder, len(prompts), samples, lambda: filter_prompts(...))

Standard library only. Test: `python -m pytest tests/runtime/test_prompt_filter.py -q` (the trainer's use of it
against the real sidecar: `tests/runtime/test_rl.py -k "short_rl_job or resumed"`).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from runtime.outputs import atomic_write_json
from runtime.rl.rollouts import ZERO_SPREAD

FILTER_FILE = "prompt-filter.json"
CHUNK_PROMPTS = 64  # prompts per generate call: large enough to keep vLLM's batch full, small enough to log progress

GenerateFn = Callable[[Sequence[list[int]], int], list[list[list[int]]]]  # (prompts, chunk index) -> token ids
ScoreFn = Callable[[Sequence[list[int]], Sequence[Mapping[str, Any]]], list[float]]  # (responses, rows) -> rewards


@dataclass(frozen=True)
class FilterResult:
    prompts: int
    samples_per_prompt: int
    kept: list[int]  # indices into the prompt list, ascending
    always_solved: int  # every sample got the same reward, the best any sample of the pass got
    never_solved: int  # every sample got the same lower reward
    mean_reward: float  # over every sample drawn
    seconds: float

    def summary(self) -> dict[str, Any]:
        """The figures without the index list (for logs and the job's results)."""
        out = {k: v for k, v in asdict(self).items() if k != "kept"}
        out["kept_prompts"] = len(self.kept)
        return out


def filter_prompts(generate: GenerateFn, score: ScoreFn, prompts: Sequence[tuple[list[int], Mapping[str, Any]]], *,
                   samples: int, log: Callable[[str], object] = print) -> FilterResult:
    """Sample every prompt `samples` times (`generate`), score the samples (`score`) and keep the prompts whose
    rewards differ. A prompt whose rewards are all equal counts as always solved when they equal the best reward
    seen in this pass (and some sample of the pass got less), never solved otherwise."""
    if samples < 2:
        raise ValueError(f"difficulty filter: samples_per_prompt must be at least 2 (got {samples})")
    start = time.perf_counter()
    groups: list[list[float]] = []
    for chunk, first in enumerate(range(0, len(prompts), CHUNK_PROMPTS)):
        part = prompts[first:first + CHUNK_PROMPTS]
        responses = generate([tokens for tokens, _ in part], chunk)
        if len(responses) != len(part) or any(len(r) != samples for r in responses):
            raise RuntimeError(f"difficulty filter: asked for {samples} samples of {len(part)} prompts, got "
                               f"{[len(r) for r in responses]}")
        rewards = score([t for group in responses for t in group],
                        [row for _, row in part for _ in range(samples)])
        groups.extend(rewards[i * samples:(i + 1) * samples] for i in range(len(part)))
        if (chunk + 1) % 8 == 0:
            log(f"difficulty filter: {len(groups)}/{len(prompts)} prompts sampled")
    drawn = [r for g in groups for r in g]
    top, bottom = max(drawn, default=0.0), min(drawn, default=0.0)
    kept, solved, unsolved = [], 0, 0
    for i, rewards in enumerate(groups):
        if max(rewards) - min(rewards) > ZERO_SPREAD:
            kept.append(i)
        elif top - bottom > ZERO_SPREAD and abs(rewards[0] - top) <= ZERO_SPREAD:
            solved += 1
        else:
            unsolved += 1
    return FilterResult(prompts=len(prompts), samples_per_prompt=samples, kept=kept, always_solved=solved,
                        never_solved=unsolved, mean_reward=sum(drawn) / max(len(drawn), 1),
                        seconds=round(time.perf_counter() - start, 1))


def load_or_filter(folder: Path, prompts: int, samples: int, run: Callable[[], FilterResult]) -> FilterResult:
    """The filter's result saved in `folder` by an earlier start of this job, else `run()`'s, saved (atomically).
    A saved result for another prompt count or sample count is not reused."""
    path = folder / FILTER_FILE
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("prompts") == prompts and saved.get("samples_per_prompt") == samples:
            return FilterResult(**saved)
    result = run()
    atomic_write_json(path, asdict(result))
    return result
