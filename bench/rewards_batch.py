"""Time one RL step's reward scoring: N code completions (a mix of right, wrong and hanging) plus math and
format, on the bounded sandbox pool. Prints the wall time, the per-completion cost and the sandbox mode.

Run: `python bench/rewards_batch.py [--n 64] [--workers 2] [--hanging 2] [--timeout 2]`.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runtime.rewards import CodeVerifier, Rewards, SandboxLimits, isolation  # noqa: E402

SAMPLE = {"prompt": "Write add(a, b).", "answer": "5", "tests": ["assert add(2, 3) == 5", "assert add(-1, 1) == 0"]}
RIGHT = "def add(a, b):\n    return a + b\n\nAnswer: 5"
WRONG = "def add(a, b):\n    return a - b\n\nAnswer: 4"
HANG = "while True:\n    pass\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--hanging", type=int, default=2, help="completions that run until the timeout")
    ap.add_argument("--timeout", type=float, default=2.0)
    args = ap.parse_args()
    config = [{"verifier": "code", "weight": 1.0}, {"verifier": "math", "weight": 1.0},
              {"verifier": "format", "weight": 0.5}]
    rewards = Rewards(config, verifiers={"code": CodeVerifier(SandboxLimits(timeout_s=args.timeout))},
                      workers=args.workers)
    completions = [HANG] * args.hanging + [(RIGHT, WRONG)[i % 2] for i in range(args.n - args.hanging)]
    start = time.monotonic()
    scored = rewards.score_batch(completions, [SAMPLE] * len(completions))
    wall = time.monotonic() - start
    mean = sum(t for t, _ in scored) / len(scored)
    print(f"sandbox: {isolation().mode}  workers: {rewards.workers}  completions: {len(completions)} "
          f"({args.hanging} hanging, timeout {args.timeout:g} s)")
    print(f"wall {wall:.2f} s  = {wall / len(completions) * 1000:.0f} ms per completion  mean reward {mean:.3f}")


if __name__ == "__main__":
    main()
