"""Reward verifiers (runtime/rewards/): math normalisation, format, weighted totals, the random-reward control, and
the code sandbox against hostile completions (each contained, each scored 0).

Every hostile completion first attacks, letting any error propagate, and then defines a correct `add`: it
scores 0 only because the attack was stopped (an error or a kill), never because the tests could not run. The
benign control with the same ending scores 1. Hanging completions wait for a 2 s timeout; the whole file runs in ~15 s.
Run: `python -m pytest tests/runtime/test_rewards.py -q`.
"""
from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, get_args

import pytest

from runtime.rewards import (VERIFIERS, CodeVerifier, FormatVerifier, MathVerifier, RandomRewards, Rewards,
                             SandboxError, SandboxLimits, extract_code, isolation, normalise, total_reward)
from spec.stages import Reward

REPO = Path(__file__).resolve().parents[2]
# Runs end in ~0.1 s; the generous timeout keeps a loaded machine from turning a contained attack into a
# timeout (still a 0, but not the failure the test looks for). Only the hanging completions wait for LOOP's.
LIMITS = SandboxLimits(timeout_s=10.0)
LOOP = SandboxLimits(timeout_s=2.0)
CODE = CodeVerifier(LIMITS)
ADD = {"prompt": "Write add(a, b).", "tests": ["assert add(2, 3) == 5", "assert add(-1, 1) == 0"]}
SOLUTION = "\ndef add(a, b):\n    return a + b\n"

namespaces = pytest.mark.skipif(isolation().degraded,
                                reason=f"no namespace sandbox here ({'; '.join(isolation().notes)}): degraded mode")


def sandbox_processes() -> list[int]:
    """Host pids of sandbox processes still alive (a sandbox is gone when its run returns)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if b"sandbox_boot.py" in cmdline:
                pids.append(int(entry))
    return pids


def hostile(attack: str) -> tuple[float, dict[str, Any]]:
    """Score `attack` + a correct add(); assert nothing of the sandbox outlives the run."""
    start = time.monotonic()
    result = CODE.score(attack + SOLUTION, ADD)
    assert time.monotonic() - start < LIMITS.timeout_s + 2
    assert sandbox_processes() == []
    return result.value, result.details


# --------------------------------------------------------------------------- code: honest completions

def test_correct_code_scores_one_and_wrong_code_zero() -> None:
    good = CODE.score(f"Here you go:\n```python{SOLUTION}```\nDone.", ADD)
    assert good.value == 1.0 and good.details["passed"] == 2, good.details
    bad = CODE.score("def add(a, b):\n    return abs(a) + b\n", ADD)
    assert bad.value == 0.0 and bad.details["passed"] == 1 and "AssertionError" in bad.details["error"]
    assert CodeVerifier(LIMITS, partial_credit=True).score("def add(a, b):\n    return abs(a) + b\n", ADD).value == 0.5


@namespaces  # degraded mode as root: only the preloaded modules, where the interpreter lives under /root
def test_code_can_use_the_standard_library_and_its_working_directory() -> None:
    code = ("import collections, json, socket, pathlib\n"
            "pathlib.Path('scratch.txt').write_text('ok')\n"
            "def add(a, b):\n    return sum(collections.Counter({'x': a, 'y': b}).values())\n")
    result = CODE.score(code, ADD)
    assert result.value == 1.0, result.details


def test_extract_code_takes_the_last_fenced_block() -> None:
    assert extract_code("a\n```python\nx = 1\n```\nb\n```\ny = 2\n```\n") == "y = 2\n"
    assert extract_code("x = 3") == "x = 3"


def test_a_row_without_tests_is_a_data_error() -> None:
    with pytest.raises(ValueError, match="'tests'"):
        CODE.score(SOLUTION, {"prompt": "p"})
    with pytest.raises(ValueError, match="non-empty"):
        CODE.score(SOLUTION, {"prompt": "p", "tests": []})


def test_a_sandbox_that_cannot_be_built_is_an_error_not_a_zero() -> None:
    limits = SandboxLimits(timeout_s=10.0)
    object.__setattr__(limits, "nofile", -5)  # past validation: the worker's setrlimit fails before any code runs
    with pytest.raises(SandboxError, match="could not be set up"):
        CodeVerifier(limits).score(SOLUTION, ADD)
    with pytest.raises(ValueError, match="nofile"):
        SandboxLimits(nofile=0)


def test_a_forged_result_line_does_not_score() -> None:
    forged = "print('deadbeef {\"passed\": 2, \"total\": 2, \"error\": null}')\nimport os\nos._exit(0)\n"
    value, details = hostile(forged)
    assert value == 0.0 and details["error"].startswith("no result"), details


# --------------------------------------------------------------------------- code: hostile completions

def test_infinite_loop_is_killed_at_the_timeout() -> None:
    start = time.monotonic()
    result = CodeVerifier(LOOP).score("while True:\n    pass\n" + SOLUTION, ADD)
    assert result.value == 0.0 and result.details["timed_out"], result.details
    assert time.monotonic() - start < LOOP.timeout_s + 2 and sandbox_processes() == []


@namespaces
def test_fork_bomb_is_stopped_and_leaves_no_process() -> None:
    value, details = hostile("import os\nwhile True:\n    os.fork()\n")
    assert value == 0.0 and "BlockingIOError" in details["error"], details


@namespaces
def test_forked_processes_that_leave_the_session_die_with_the_sandbox() -> None:
    escape = "import os, time\nfor _ in range(4):\n    if os.fork() == 0:\n        os.setsid()\n        time.sleep(60)\n"
    start = time.monotonic()
    result = CODE.score(escape + SOLUTION, ADD)
    assert result.value == 1.0  # the escape is harmless here; what matters is that its children are gone:
    assert sandbox_processes() == [] and time.monotonic() - start < LIMITS.timeout_s


@namespaces
def test_writing_outside_its_directory_fails_and_nothing_appears(tmp_path: Path) -> None:
    target = Path(f"/tmp/pwned-{secrets.token_hex(6)}")
    value, details = hostile(f"open({str(target)!r}, 'w').write('pwned')\n")
    assert value == 0.0 and "Read-only file system" in details["error"], details
    assert not target.exists()


@namespaces
def test_writing_to_the_repo_fails() -> None:
    target = REPO / f"pwned-{secrets.token_hex(6)}"
    value, details = hostile(f"open({str(target)!r}, 'w').write('pwned')\n")
    assert value == 0.0 and not target.exists(), details
    value, details = hostile(f"open({str(REPO / 'README.md')!r}, 'a').write('pwned')\n")
    assert value == 0.0 and "pwned" not in (REPO / "README.md").read_text(encoding="utf-8")[-100:], details


@namespaces
def test_no_network_to_an_external_address() -> None:
    value, details = hostile("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)\n")
    assert value == 0.0 and "Network is unreachable" in details["error"], details


@namespaces
def test_no_network_to_the_trainers_localhost() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.2)
        port = server.getsockname()[1]
        value, details = hostile(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n")
        assert value == 0.0 and "OSError" in details["error"], details
        with pytest.raises(socket.timeout):
            server.accept()


def test_huge_memory_allocation_fails() -> None:
    value, details = hostile("blob = bytearray(16 * 1024 ** 3)\n")
    assert value == 0.0 and "MemoryError" in details["error"], details


def test_huge_output_is_cut_off_and_not_buffered() -> None:
    start = time.monotonic()
    result = CODE.score("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n" + SOLUTION, ADD)
    assert result.value == 0.0 and not result.details["timed_out"], result.details
    assert time.monotonic() - start < LIMITS.timeout_s
    assert len(result.details["stderr"]) <= 500


def test_huge_files_are_refused() -> None:
    value, details = hostile("open('big.bin', 'wb').write(b'x' * (64 * 1024 * 1024))\n")
    assert value == 0.0 and "File too large" in details["error"], details


@namespaces
@pytest.mark.parametrize("kill", [
    "os.kill(os.getppid(), signal.SIGKILL)",
    "os.killpg(0, signal.SIGKILL)",
    "os.kill(-1, signal.SIGKILL)",
    "os.kill(RUNNER, signal.SIGKILL)",
    "os.kill(BYSTANDER, signal.SIGKILL)",
])
def test_killing_the_parent_or_others_kills_nothing_outside(kill: str) -> None:
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        code = kill.replace("RUNNER", str(os.getpid())).replace("BYSTANDER", str(bystander.pid))
        value, details = hostile(f"import os, signal\n{code}\n")
        assert value == 0.0, details
        assert bystander.poll() is None  # the runner is alive too: this line runs
    finally:
        bystander.kill()
        bystander.wait()


@namespaces
def test_limits_and_privileges_cannot_be_raised_again() -> None:
    value, details = hostile("import resource\nresource.setrlimit(resource.RLIMIT_CPU, (10**6, 10**6))\n")
    assert value == 0.0 and "not allowed" in details["error"], details
    value, details = hostile("import os\nos.setuid(0)\n")
    assert value == 0.0 and "Operation not permitted" in details["error"], details


def test_the_environment_carries_no_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-" + secrets.token_hex(12)
    monkeypatch.setenv("RECIPE_FAKE_SECRET", secret)
    snoop = (
        "import os\n"
        "seen = repr(dict(os.environ))\n"
        f"for path in ['/proc/self/environ', '/proc/1/environ', '/proc/{os.getpid()}/environ', "
        "'/proc/' + str(os.getppid()) + '/environ'] + [f'/proc/{p}/environ' for p in os.listdir('/proc')]:\n"
        "    try:\n"
        "        seen += open(path, errors='replace').read()\n"
        "    except OSError:\n"
        "        pass\n"
        "print(seen)\n"
        f"assert {secret!r} in seen, 'no secret'\n"
    )
    result = CODE.score(snoop + SOLUTION, ADD)
    assert result.value == 0.0 and "no secret" in result.details["error"], result.details
    assert secret not in result.details["stderr"]


# --------------------------------------------------------------------------- math

@pytest.mark.parametrize("reply, answer", [
    ("4 + 8 = 12\nAnswer: 12", "12"),
    ("Answer: 12.0", "12"),
    ("Answer: 1/2", "0.5"),
    ("Answer: 1,234", "1234"),
    ("Answer: +5", "5"),
    ("Answer: 460.", "460"),
    ("Answer:   460  \n", "460"),
    ("Answer: \u22127", "-7"),
    ("Answer: $\\boxed{12}$", "12"),
    ("Answer: 3\nwait\nAnswer: 5", "5"),
    ("5", "5"),
])
def test_math_normalised_matches(reply: str, answer: str) -> None:
    result = MathVerifier().score(reply, {"prompt": "q", "answer": answer})
    assert result.value == 1.0, result.details


@pytest.mark.parametrize("reply, answer", [
    ("Answer: 461", "460"),
    ("Answer: 12.5", "12"),
    ("Answer: 5\nwait\nAnswer: 3", "5"),
    ("Answer:", "5"),
    ("Answer: five", "5"),
])
def test_math_mismatches(reply: str, answer: str) -> None:
    assert MathVerifier().score(reply, {"prompt": "q", "answer": answer}).value == 0.0


def test_math_normalise() -> None:
    assert normalise("  +1,234.  ") == "1234"
    assert normalise("1,23") == "1,23"  # not a thousands separator


def test_math_verify_fallback_for_latex() -> None:
    pytest.importorskip("math_verify")
    result = MathVerifier().score("Answer: \\frac{1}{2}", {"answer": "0.5"})
    assert result.value == 1.0 and result.details["match"] == "math_verify", result.details
    hostile_result = MathVerifier().score("Answer: 9**9**9**9", {"answer": "5"})
    assert hostile_result.value == 0.0


def test_math_needs_the_answer_field() -> None:
    with pytest.raises(ValueError, match="'answer'"):
        MathVerifier().score("Answer: 1", {"prompt": "q"})


# --------------------------------------------------------------------------- format

@pytest.mark.parametrize("reply, ok", [
    ("5 + 7 = 12, write 2 carry 1\nAnswer: 12", True),
    ("Answer: 12", True),
    ("Answer: 12\n", True),
    ("steps\nAnswer: 12\nI hope that helps", False),
    ("Answer: 3\nAnswer: 12", False),
    ("the answer is 12", False),
    ("Answer: ", False),
    ("Answer:12", False),
    ("x" * 2000 + "\nAnswer: 12", False),
])
def test_format(reply: str, ok: bool) -> None:
    result = FormatVerifier().score(reply, {})
    assert result.value == float(ok), result.details


def test_format_can_ask_for_working_lines() -> None:
    assert FormatVerifier(min_lines=2).score("Answer: 12", {}).value == 0.0
    assert FormatVerifier(min_lines=2).score("7 + 5 = 12\nAnswer: 12", {}).value == 1.0


# --------------------------------------------------------------------------- weighted totals and batches

def test_every_spec_verifier_has_an_entry() -> None:
    assert set(get_args(Reward.model_fields["verifier"].annotation)) == set(VERIFIERS)


def test_weighted_total() -> None:
    config = [Reward(verifier="math", weight=1.0), {"verifier": "format", "weight": 0.5}]
    row = {"prompt": "What is 7 + 5?", "answer": "12"}
    total, parts = total_reward("7 + 5 = 12\nAnswer: 12", row, config)
    assert total == 1.5 and set(parts) == {"math", "format"}
    assert total_reward("Answer: 12\nthanks", row, config)[0] == 1.0
    assert total_reward("7 + 5 = 13\nAnswer: 13", row, config)[0] == 0.5
    with pytest.raises(ValueError, match="twice"):
        Rewards([{"verifier": "math"}, {"verifier": "math", "weight": 2}])
    with pytest.raises(ValueError, match="unknown verifier 'maths'"):
        Rewards([{"verifier": "maths"}])


def test_batch_scores_in_order_with_code_on_a_bounded_pool() -> None:
    rewards = Rewards([{"verifier": "code", "weight": 2.0}, {"verifier": "format", "weight": 1.0}],
                      verifiers={"code": CodeVerifier(SandboxLimits(timeout_s=3.0))}, workers=2)
    completions = [SOLUTION + "# Answer: x", "def add(a, b):\n    return 0\n", "while True:\n    pass\n",
                   SOLUTION, "```python" + SOLUTION + "```\nAnswer: done"]
    start = time.monotonic()
    scored = rewards.score_batch(completions, [ADD] * len(completions))
    assert [total for total, _ in scored] == [2.0, 0.0, 0.0, 2.0, 3.0]
    assert scored[2][1]["code"].details["timed_out"]
    assert time.monotonic() - start < 12


# --------------------------------------------------------------------------- the random-reward control

def test_random_reward_is_deterministic_and_fair() -> None:
    config = [{"verifier": "math", "weight": 1.0}, {"verifier": "format", "weight": 0.5}]
    rows = [{"prompt": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(250)]
    batch = [row for row in rows for _ in range(8)]  # groups of 8 completions per prompt
    completions = ["Answer: 1"] * len(batch)
    a = RandomRewards(config, seed=1).score_batch(completions, batch, step=3)
    b = RandomRewards(config, seed=1).score_batch(completions, batch, step=3)
    c = RandomRewards(config, seed=2).score_batch(completions, batch, step=3)
    d = RandomRewards(config, seed=1).score_batch(completions, batch, step=4)
    totals = [t for t, _ in a]
    assert totals == [t for t, _ in b] and totals != [t for t, _ in c] and totals != [t for t, _ in d]
    assert set(totals) == {0.0, 1.5}  # the real total's two ends: 0 and the sum of the weights
    assert abs(sum(v == 1.5 for v in totals) / len(totals) - 0.5) < 0.03
    groups = [totals[i:i + 8] for i in range(0, len(totals), 8)]
    assert sum(len(set(g)) == 1 for g in groups) / len(groups) < 0.05  # groups vary: GRPO gets advantages
    one = RandomRewards(config, seed=1).score("anything", batch[8 * 7], step=3, index=5)
    assert one[0] == totals[8 * 7 + 5]
