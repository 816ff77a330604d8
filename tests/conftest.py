"""Shared helpers: run the `recipe` CLI in-process or as a subprocess, and small recipes to edit."""
from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import pytest
from hypothesis import settings

# CI explores the same examples on every run (a red CI must mean a real regression); locally they vary.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"
TINY = RECIPES / "tiny-think.yaml"
# tiny-think with the blocks its runtime does not run yet (RegMix, delta pairs): the compiler's tests of them
TINY_FULL = Path(__file__).resolve().parent / "compiler" / "recipes" / "tiny-think-full.yaml"

# One diagnostic line: FILE:LINE:COL: message, where FILE is a path without ':' or a `<--set ...>` pseudo-file.
DIAGNOSTIC = re.compile(r"^(?:<--set .*>|[^:\n]+):\d+:\d+: .+$")

# A minimal valid recipe: local cluster, one source with a fixed mix, one pretrain stage.
MINIMAL = """\
name: mini
description: a minimal recipe
cluster: local
model:
  family: llama3
  vocab_size: 256
  d_model: 64
  n_layers: 2
  n_heads: 4
  n_kv_heads: 2
  ffn_hidden: 128
  max_seq_len: 128
data:
  sources:
    text: {path: ./data/text, tokens: 1000000}
  mix: {kind: fixed, weights: {text: 1.0}}
stages:
  - name: pretrain
    kind: pretrain
    lr: 1.0e-3
    global_batch_sequences: 8
    micro_batch_size: 4
    seq_len: 128
    steps: 10
"""

# The same recipe as a plain dict (for property tests that mutate and dump it).
MINIMAL_DICT = {
    "name": "mini",
    "description": "a minimal recipe",
    "cluster": "local",
    "model": {
        "family": "llama3", "vocab_size": 256, "d_model": 64, "n_layers": 2, "n_heads": 4,
        "n_kv_heads": 2, "ffn_hidden": 128, "max_seq_len": 128,
    },
    "data": {
        "sources": {"text": {"path": "./data/text", "tokens": 1000000}},
        "mix": {"kind": "fixed", "weights": {"text": 1.0}},
    },
    "stages": [
        {"name": "pretrain", "kind": "pretrain", "lr": 1.0e-3, "global_batch_sequences": 8,
         "micro_batch_size": 4, "seq_len": 128, "steps": 10},
    ],
}


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()


def run_main(args: Sequence[object]) -> CliResult:
    """`compiler.cli.main(args)` in this process, with stdout and stderr captured (usable inside hypothesis)."""
    from compiler.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse usage errors
            code = exc.code if isinstance(exc.code, int) else 1
    return CliResult(code, out.getvalue(), err.getvalue())


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RECIPE_DEBUG", "PYTHONPATH")}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def run_subprocess(args: Sequence[object], *, cwd: Path | str | None = None, env: dict[str, str] | None = None,
                   timeout: float = 120) -> CliResult:
    """`python -m compiler.cli ARGS` in a fresh interpreter (the repository on PYTHONPATH unless `env` says otherwise)."""
    proc = subprocess.run(
        [sys.executable, "-m", "compiler.cli", *[str(a) for a in args]],
        cwd=cwd, env=env if env is not None else subprocess_env(), capture_output=True, text=True, timeout=timeout,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run `compiler.cli.main([...])` in-process; stdout/stderr captured with capsys."""
    from compiler.cli import main

    def run(*args: object) -> CliResult:
        capsys.readouterr()
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture
def run_cli_subprocess() -> Callable[..., CliResult]:
    """Run `python -m compiler.cli ...` as a subprocess."""
    return run_subprocess


def line_of(text: str, needle: str, *, occurrence: int = 1) -> int:
    """1-based number of the line holding the `occurrence`-th match of `needle`."""
    seen = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            seen += 1
            if seen == occurrence:
                return number
    raise AssertionError(f"{needle!r} not in text")


def col_of(text: str, needle: str, *, occurrence: int = 1) -> int:
    """1-based column where `needle` starts on its line."""
    line = text.splitlines()[line_of(text, needle, occurrence=occurrence) - 1]
    return line.index(needle) + 1


def edit(text: str, old: str, new: str, count: int = 1) -> str:
    """str.replace that fails loudly when `old` is not there (so tests break when a recipe changes)."""
    assert old in text, f"{old!r} not in recipe text"
    return text.replace(old, new, count)


@pytest.fixture
def tiny_text() -> str:
    return TINY.read_text(encoding="utf-8")


def tiny_full_portable() -> str:
    """The tiny-think-full fixture's text with its eval task files as absolute paths, to compile from anywhere."""
    return TINY_FULL.read_text(encoding="utf-8").replace("../../../recipes/evals/", f"{RECIPES}/evals/")


@pytest.fixture
def tiny_full_text() -> str:
    return tiny_full_portable()


def descendants(plan: dict, job_id: str) -> set[str]:
    """Every job that depends on `job_id`, directly or through others (from the plan's depends_on)."""
    children: dict[str, set[str]] = {}
    for job in plan["jobs"]:
        for parent in job["depends_on"]:
            children.setdefault(parent, set()).add(job["id"])
    out: set[str] = set()
    todo = [job_id]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def stop_sidecar_job(proc: subprocess.Popen, trainer_dir: Path, reason: str = "test teardown") -> None:
    """End a rollout sidecar job a test started (its own session): the trainer's stop request, then SIGKILL of its
    process group if it has not exited within a minute."""
    import signal

    from runtime.rollout import control

    if proc.poll() is not None:
        return
    control.request_stop(trainer_dir, reason)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def generated_tokens(url: str) -> float:
    """vLLM's `generation_tokens_total` counter from a server's Prometheus endpoint: how far decoding has got,
    read from the server rather than guessed from wall time."""
    import urllib.request

    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith("vllm:generation_tokens_total")]
    assert values, f"{url}/metrics has no vllm:generation_tokens_total"
    return sum(values)


def wait_for_tokens(url: str, at_least: float, timeout: float = 120.0) -> float:
    """Poll `generated_tokens` until it reaches `at_least`; the count then."""
    import time

    deadline = time.time() + timeout
    while (seen := generated_tokens(url)) < at_least and time.time() < deadline:
        time.sleep(0.005)
    return seen


def random_init_hf_model(spec: Any, folder: Path, tokenizer_dir: Path, *, embedding_scale: float = 1.0) -> Any:
    """A random-init model of `spec` (seed 0) saved as a Hugging Face folder with the tokenizer of `tokenizer_dir`,
    as vLLM loads it; returns the model. `embedding_scale` < 1 shrinks the (tied) embeddings so that it samples
    almost uniformly over the vocabulary (left as initialised, a d_model 192 model's replies are all whitespace)."""
    import torch

    from runtime.hf_export import export_hf
    from runtime.model_factory import build_model
    from runtime.train import TOKENIZER_FILES

    model = build_model(spec, seed=0).eval()
    if embedding_scale != 1.0:
        with torch.no_grad():
            model.tok_embeddings.weight.mul_(embedding_scale)
    export_hf(model, spec, folder, extra_config={"bos_token_id": 0, "eos_token_id": 1})
    for name in TOKENIZER_FILES:
        (folder / name).write_bytes((tokenizer_dir / name).read_bytes())
    return model
