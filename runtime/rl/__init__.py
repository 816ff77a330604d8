"""Asynchronous RLVR (GRPO) against the vLLM rollout sidecar (issue 7).

- `job`: the plan's `rlvr_trainer` entry, `run_trainer(job)`: finds its sidecar (`RECIPE_PEER_<ROLLOUT_JOB>`) and
  its init model (`RECIPE_INPUT_<JOB>`), trains, exports `hf/`, writes DONE.json with held-out exact match before
  and after RL.
- `trainer`: `GRPOTrainer` (torchtitan's Trainer with an RL step) and the prompt set.
- `rollouts`: the asynchronous producer (bounded staleness, in-flight weight updates, sidecar restarts).
- `loss`: advantages, clipped surrogate, TIS/MIS corrections, k3 KL (pure functions).

    python -m runtime.run_job --config build/<name>/jobs/rlvr/config.json --entry runtime.rl:run_trainer

Importing this package imports no torch (the launcher resolves entries); `run_trainer` loads the rest on call.
Test: `python -m pytest tests/runtime/test_rl.py -q`; bench: `python bench/rl_async.py`.
"""
from __future__ import annotations

from typing import Any


def run_trainer(job: dict[str, Any]) -> None:
    """The rlvr_trainer job's entry (see runtime/rl/job.py)."""
    from runtime.rl.job import run_trainer as run

    run(job)


__all__ = ["run_trainer"]
