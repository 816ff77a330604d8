"""Test entries for `recipe launch` (tests/runtime/test_launch.py): stand-ins for the trainer that record
when they ran and what environment they saw, fail, or wait for their RL group partner.

A plan copy names them as `launch_entries:<function>` (tests/runtime is put on PYTHONPATH).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


def _out() -> Path:
    return Path(os.environ["RECIPE_OUTPUT_DIR"])


def record(job: dict[str, Any]) -> None:
    """Write record.<task>.json (start/end time, RECIPE_* env, pid), a metrics line, and DONE.json when it is the last task."""
    start = time.time()
    time.sleep(0.05)
    out = _out()
    task = os.environ.get("RECIPE_TASK_INDEX", "0")
    with (out / "calls.log").open("a", encoding="utf-8") as handle:
        handle.write(f"{task}\n")
    (out / "metrics.jsonl").open("a").write(json.dumps({"step": 1, "loss": 2.5, "tokens_per_s": 1000.0}) + "\n")
    env = {k: v for k, v in os.environ.items() if k.startswith("RECIPE_")}
    (out / f"record.{task}.json").write_text(json.dumps({"id": job["id"], "start": start, "end": time.time(), "env": env, "pid": os.getpid(),
                                                        "pgid": os.getpgrp(),
                                                        "affinity": sorted(os.sched_getaffinity(0))}))
    if not job.get("array"):
        (out / "DONE.json").write_text(json.dumps({"final_loss": 1.25, "metrics": {"acc": 0.5}}))


def group_member(job: dict[str, Any]) -> None:
    """Announce itself, then wait (up to 20 s) until both members of its group are running."""
    run_dir = Path(os.environ["RECIPE_RUN_DIR"])
    peers = [k for k in os.environ if k.startswith("RECIPE_PEER_")]
    if len(peers) != 1:
        raise RuntimeError(f"{job['id']}: expected one RECIPE_PEER_ variable, got {peers}")
    (run_dir / f"{job['group']}.{job['id']}.here").write_text("1")
    deadline = time.time() + 20
    while len(list(run_dir.glob(f"{job['group']}.*.here"))) < 2:
        if time.time() > deadline:
            raise TimeoutError(f"{job['id']}: the other member of group {job['group']} never started")
        time.sleep(0.02)
    record(job)


def fail(job: dict[str, Any]) -> None:
    raise RuntimeError(f"{job['id']}: boom")


def slow(job: dict[str, Any]) -> None:
    """Start (record.<task>.json is written at once), then sleep up to 60 s: a job to cancel."""
    out = _out()
    (out / "started").write_text(str(time.time()))
    time.sleep(60)
    record(job)


def outlive_the_time_limit(job: dict[str, Any]) -> None:
    """First attempt: count it and sleep past any short time limit (Slurm signals, submitit requeues);
    a later attempt (the requeued one) finishes at once. attempts.log holds one line per attempt."""
    out = _out()
    with (out / "attempts.log").open("a", encoding="utf-8") as handle:
        handle.write(f"{time.time()} {os.environ.get('SLURM_RESTART_COUNT', '0')}\n")
    if len((out / "attempts.log").read_text().splitlines()) == 1:
        time.sleep(600)
    record(job)
