"""Hostile strings in every free-text field: the rendered launch scripts stay inert and the plan keeps the text.

Each value that could reach a shell is quoted (or, for `#SBATCH` values, restricted by the schema). We compile a
recipe with shell-injection attempts in every free-text field, check each job.sbatch with `bash -n`, then really run
it with `python` shadowed by a harmless stub, and look for the file the injections would create.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from compiler.located import to_plain
from compiler.yaml_load import parse_yaml
from conftest import DIAGNOSTIC, MINIMAL, TINY, edit, run_main, tiny_full_portable

HOSTILE = [
    "$(touch PWNED)",
    "`touch PWNED`",
    "; touch PWNED",
    "'; touch PWNED; '",
    "\ntouch PWNED",
    '"$(touch PWNED)"',
    "x\ntouch PWNED\n#",
    "$'\\x41'; touch PWNED #",
    "\r\ntouch PWNED",
]
IDS = ["dollar-paren", "backticks", "semicolon", "quote-break", "newline", "double-quoted", "newline-comment",
       "ansi-c", "crlf"]

BASH = shutil.which("bash")
pytestmark = pytest.mark.skipif(BASH is None, reason="bash is needed to run the generated scripts")


def tiny_tree() -> dict[str, Any]:
    return to_plain(parse_yaml(tiny_full_portable(), "tiny-think-full.yaml"))


def stage(tree: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in tree["stages"] if s["name"] == name)


def hostile_recipe(h: str) -> tuple[dict[str, Any], list[str]]:
    """tiny-think with `h` in every free-text field; returns it and the values the plan must keep verbatim."""
    tree = tiny_tree()
    kept: list[str] = []

    def put(block: dict[str, Any], key: str, value: str, *, in_plan: bool = True) -> None:
        block[key] = value
        if in_plan:
            kept.append(value)

    put(tree, "description", h)
    for s in tree["stages"]:
        put(s, "description", h, in_plan=False)  # not in the plan: see test_stage_descriptions_are_kept_in_the_plan
    sources = tree["data"]["sources"]
    put(sources["arithmetic"], "path", h)
    put(sources["arithmetic"], "text_field", h)
    put(sources["arithmetic"], "eval_split", h)
    put(sources["arithmetic"], "split", h)
    del sources["words"]["path"]
    put(sources["words"], "hf", h)
    put(sources["words"], "subset", h)
    held_out = {"path": h, "text_field": h, "split": h}
    tree["evals"]["suites"]["bpb"]["sets"] = {"held-out": held_out}
    kept.append(h)

    sft = stage(tree, "sft")
    del sft["dataset"]
    sft["distill"] = {"prompts": {"hf": h, "text_field": h, "split": h}, "teacher": "org/" + h, "max_tokens": 64,
                      "num_prompts": 8, "gpus": 0}
    kept += [h, "org/" + h]
    put(sft, "chat_template", h)

    delta = stage(tree, "dpo")["delta"]
    put(delta["prompts"], "path", h)
    put(delta["prompts"], "text_field", h)
    put(delta, "chosen", "org/" + h)
    put(delta, "rejected", "./" + h)

    rl = stage(tree, "rlvr")
    put(rl["prompts"], "hf", h)
    del rl["prompts"]["path"]
    put(rl["prompts"], "text_field", h)

    put(stage(tree, "midtrain"), "from", "../" + h)  # a checkpoint folder
    return tree, kept


def strings(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set().union(*(strings(v) for v in value.values()), set(value)) if value else set()
    if isinstance(value, list):
        return set().union(*(strings(v) for v in value)) if value else set()
    return {value} if isinstance(value, str) else set()


def stub_path(tmp: Path) -> tuple[Path, Path]:
    """A folder with a `python` that only logs its arguments, and the log file."""
    bin_dir = tmp / "stub-bin"
    bin_dir.mkdir()
    log = tmp / "stub.log"
    python = bin_dir / "python"
    python.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" >> "{log}"\nexit 0\n')
    python.chmod(python.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return bin_dir, log


def run_scripts(build: Path, tmp: Path) -> list[Path]:
    """`bash -n` and then run every job.sbatch; returns the scripts."""
    scripts = sorted(build.glob("jobs/*/job.sbatch"))
    assert scripts, "no launch scripts rendered"
    bin_dir, log = stub_path(tmp)
    for script in scripts:
        syntax = subprocess.run([BASH, "-n", str(script)], capture_output=True, text=True)
        assert syntax.returncode == 0, (script, syntax.stderr)
        work = tmp / "cwd" / script.parent.name
        work.mkdir(parents=True)
        env = {
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(tmp), "TMPDIR": str(tmp), "SLURM_SUBMIT_DIR": str(script.parent),
        }
        before = log.read_text().count("--entry") if log.exists() else 0
        ran = subprocess.run([BASH, str(script)], cwd=work, env=env, capture_output=True, text=True, timeout=30)
        assert ran.returncode == 0, (script, ran.stderr)
        # The script got as far as its last line: the stub was called once more, with the job's config.
        assert log.read_text().count("--entry") == before + 1, ran.stderr
        assert f"{script.parent}/config.json" in log.read_text()
    return scripts


def pwned(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob("*PWNED*")]


@pytest.mark.parametrize("h", HOSTILE, ids=IDS)
def test_hostile_text_is_inert_and_kept(tmp_path: Path, h: str) -> None:
    tree, kept = hostile_recipe(h)
    recipe_dir = tmp_path / "recipes"
    recipe_dir.mkdir()
    recipe = recipe_dir / "hostile.yaml"
    recipe.write_text(yaml.safe_dump(tree, allow_unicode=True, sort_keys=False), encoding="utf-8")
    out = tmp_path / "build"
    result = run_main(["compile", recipe, "-o", out])
    assert result.code == 0, result.err
    build = out / "tiny-think-full"

    run_scripts(build, tmp_path)
    assert pwned(tmp_path) == [], "an injected command ran"
    assert not Path("PWNED").exists() and not (Path(os.environ.get("TMPDIR", "/tmp")) / "PWNED").exists()

    plan = json.loads((build / "plan.json").read_text(encoding="utf-8"))
    found = strings(plan)
    for value in kept:
        assert value in found, f"{value!r} is not kept verbatim in plan.json"
    for config in build.glob("jobs/*/config.json"):
        json.loads(config.read_text(encoding="utf-8"))  # still valid JSON


def test_the_stub_would_notice_an_injection(tmp_path: Path) -> None:
    """Control: the same harness does find PWNED when a script really runs `touch PWNED`."""
    build = tmp_path / "build"
    (build / "jobs" / "j").mkdir(parents=True)
    script = build / "jobs" / "j" / "job.sbatch"
    script.write_text('#!/bin/bash\ntouch PWNED\nexec python -m x --config "$SLURM_SUBMIT_DIR/config.json" --entry e\n')
    run_scripts(build, tmp_path)
    assert pwned(tmp_path)


@pytest.mark.parametrize("h", HOSTILE + ["gpu\n", "gpu ", "a#b"], ids=IDS + ["trailing-newline", "space", "hash"])
@pytest.mark.parametrize("field", ["partition", "account", "qos"])
def test_hostile_slurm_names_are_rejected(tmp_path: Path, field: str, h: str) -> None:
    """Values on `#SBATCH` lines cannot be quoted there: the schema must refuse them, and nothing is written."""
    tree = to_plain(parse_yaml(MINIMAL, "m.yaml"))
    tree["cluster"] = {"profile": "h100-80gb", field: h}
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tree, allow_unicode=True, sort_keys=False), encoding="utf-8")
    out = tmp_path / "out"
    result = run_main(["compile", recipe, "-o", out])
    assert result.code == 2, result.out
    assert result.out == "" and not out.exists()
    lines = result.err.splitlines()
    assert lines and all(DIAGNOSTIC.match(line) for line in lines), lines
    assert any(f"cluster.{field}:" in line for line in lines), lines


@pytest.mark.parametrize("h", HOSTILE, ids=IDS)
@pytest.mark.parametrize(
    "where",
    ["name", "stage-name", "time_limit", "cluster-time_limit"],
)
def test_hostile_identifiers_and_time_limits_are_rejected(tmp_path: Path, where: str, h: str) -> None:
    tree = to_plain(parse_yaml(MINIMAL, "m.yaml"))
    if where == "name":
        tree["name"] = h
    elif where == "stage-name":
        tree["stages"][0]["name"] = h
    elif where == "time_limit":
        tree["stages"][0]["resources"] = {"time_limit": "01:00:00" + h}
    else:
        tree["cluster"] = {"profile": "h100-80gb", "time_limit": "01:00:00" + h}
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tree, allow_unicode=True, sort_keys=False), encoding="utf-8")
    out = tmp_path / "out"
    result = run_main(["compile", recipe, "-o", out])
    assert result.code == 2 and not out.exists(), result.out + result.err
    assert all(DIAGNOSTIC.match(line) for line in result.err.splitlines())


def test_slurm_scripts_with_partition_account_qos_are_inert(tmp_path: Path) -> None:
    """Valid Slurm names render on #SBATCH lines; the script still parses and runs (stub python)."""
    text = edit(MINIMAL, "cluster: local", "cluster: {profile: h100-80gb, partition: gpu-long, account: proj_1.a, qos: high+}")
    text = edit(text, "description: a minimal recipe", 'description: "$(touch PWNED)"')
    text = edit(text, "global_batch_sequences: 8", "global_batch_sequences: 32")  # 8 GPUs x micro batch 4
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    out = tmp_path / "out"
    result = run_main(["compile", recipe, "-o", out])
    assert result.code == 0, result.err
    scripts = run_scripts(out / "mini", tmp_path)
    body = scripts[0].read_text()
    for line in ("#SBATCH --partition=gpu-long", "#SBATCH --account=proj_1.a", "#SBATCH --qos=high+"):
        assert line in body.splitlines()
    assert pwned(tmp_path) == []


def test_stage_descriptions_are_kept_in_the_plan(tmp_path: Path) -> None:
    """spec: a stage's description is 'Free text shown in plans and diffs' - so plan.json must carry it."""
    text = edit(MINIMAL, "    kind: pretrain\n", "    kind: pretrain\n    description: warm up the tokenizer-free model\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    result = run_main(["compile", recipe, "-o", tmp_path / "out"])
    assert result.code == 0, result.err
    plan = (tmp_path / "out" / "mini" / "plan.json").read_text()
    assert "warm up the tokenizer-free model" in plan
