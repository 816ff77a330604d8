"""The compiler stays light: compiling, explaining and printing the schema never import the training stack."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, TINY, subprocess_env

HEAVY = ["torch", "vllm", "datasets", "lightgbm", "submitit", "numpy", "transformers", "pandas", "lm_eval", "matplotlib"]

PROBE = """
import json, sys
from compiler.cli import main
codes = [main(argv) for argv in json.loads(sys.argv[1])]
heavy = sorted(m for m in sys.modules if m.split(".")[0] in json.loads(sys.argv[2]))
print(json.dumps({"codes": codes, "heavy": heavy}))
"""


@pytest.mark.parametrize(
    "commands",
    [
        [["compile", str(TINY), "-o", "{out}"]],
        [["explain", str(TINY)], ["explain", str(TINY), "--json"]],
        [["schema"]],
    ],
    ids=["compile", "explain", "schema"],
)
def test_no_heavy_imports(tmp_path: Path, commands: list[list[str]]) -> None:
    argvs = [[a.replace("{out}", str(tmp_path / "out")) for a in argv] for argv in commands]
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(argvs), json.dumps(HEAVY)],
        cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["codes"] == [0] * len(argvs), proc.stderr
    assert report["heavy"] == [], f"the compiler imported {report['heavy']}"


def test_the_probe_would_notice_a_heavy_import(tmp_path: Path) -> None:
    """Control: json is 'heavy' for this run, and the probe reports it."""
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps([["schema"]]), json.dumps(["json"])],
        cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=120,
    )
    assert "json" in json.loads(proc.stdout.strip().splitlines()[-1])["heavy"]


def test_spec_and_compiler_modules_do_not_import_heavy_packages() -> None:
    """Every module under spec/ and compiler/ imports without pulling the training stack in."""
    modules = sorted(
        ".".join(p.relative_to(REPO).with_suffix("").parts)
        for package in ("spec", "compiler")
        for p in (REPO / package).rglob("*.py")
    )
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m.removesuffix('.__init__'))\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_launch_resolves_every_entry_without_the_training_stack(tmp_path: Path) -> None:
    """`recipe launch` (and its dry run) checks every job's entry by importing its module: those modules import
    torch, vLLM and datasets only when a job runs, so a dry run of a 4,096-task plan stays well under a second."""
    probe = (
        "import json, sys\n"
        "from compiler.job_common import JOB_ENTRIES\n"
        "from runtime.run_job import resolve_entry\n"
        "found = {entry: resolve_entry(entry) is not None for entry in JOB_ENTRIES.values()}\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'vllm', 'datasets', 'lightgbm', 'lm_eval'))\n"
        "print(json.dumps({'found': found, 'heavy': heavy}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=subprocess_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["found"]["runtime.train:run_lm"] and report["found"]["runtime.train:run_dpo"]
    assert report["heavy"] == [], f"resolving entries imported {report['heavy']}"
