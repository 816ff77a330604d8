"""Determinism: the same recipe gives the same bytes whatever the working directory, hash seed or checkout path,
and a job's hash changes exactly when its own inputs or an ancestor's change."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import MINIMAL, RECIPES, REPO, TINY, descendants, run_main, run_subprocess, subprocess_env

SHIPPED = sorted(RECIPES.glob("*.yaml"))


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def load_plan(build: Path) -> dict[str, Any]:
    return json.loads((build / "plan.json").read_text(encoding="utf-8"))


def hashes(plan: dict[str, Any]) -> dict[str, str]:
    return {job["id"]: job["hash"] for job in plan["jobs"]}


def test_there_are_shipped_recipes() -> None:
    assert TINY in SHIPPED


@pytest.mark.parametrize("recipe", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_same_bytes_from_other_directories_and_hash_seeds(tmp_path: Path, recipe: Path) -> None:
    runs = []
    for side, seed in (("a", "1"), ("b", "12345")):
        cwd = tmp_path / side / "cwd"
        cwd.mkdir(parents=True)
        out = tmp_path / side / "out"  # same depth on both sides: recipe_dir (a relative path) is the same too
        result = run_subprocess(["compile", recipe.resolve(), "-o", out], cwd=cwd, env=subprocess_env(PYTHONHASHSEED=seed))
        assert result.code == 0, result.err
        runs.append(files_under(out))
    first, second = runs
    assert sorted(first) == sorted(second)
    assert any(name.endswith("plan.json") for name in first)
    assert any(name.endswith("job.sbatch") for name in first)
    for name in first:
        assert first[name] == second[name], f"{name} differs between runs"


@pytest.mark.parametrize("recipe", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_hashes_do_not_depend_on_the_checkout_path(tmp_path: Path, recipe: Path) -> None:
    copy = tmp_path / "elsewhere" / "checkout"
    for part in ("spec", "compiler", "recipes"):
        shutil.copytree(REPO / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
    here = run_subprocess(["compile", recipe, "-o", tmp_path / "here"], cwd=REPO)
    assert here.code == 0, here.err
    there = run_subprocess(["compile", Path("recipes") / recipe.name, "-o", tmp_path / "there"], cwd=copy,
                           env=subprocess_env(PYTHONPATH=str(copy)))
    assert there.code == 0, there.err
    where = subprocess.run([sys.executable, "-c", "import compiler, spec; print(compiler.__file__, spec.__file__)"],
                           cwd=copy, env=subprocess_env(PYTHONPATH=str(copy)), capture_output=True, text=True)
    assert where.stdout.split() == [str(copy / "compiler" / "__init__.py"), str(copy / "spec" / "__init__.py")]
    name = load_plan(next((tmp_path / "here").iterdir()))["recipe"]["name"]
    plan_here, plan_there = load_plan(tmp_path / "here" / name), load_plan(tmp_path / "there" / name)
    assert hashes(plan_here) == hashes(plan_there)
    assert all(len(h) == 64 for h in hashes(plan_here).values())
    assert plan_here["jobs"] == plan_there["jobs"]


def test_in_process_compiles_are_identical(tmp_path: Path) -> None:
    for side in ("a", "b"):
        assert run_main(["compile", TINY, "-o", tmp_path / side]).code == 0
    assert files_under(tmp_path / "a") == files_under(tmp_path / "b")


# --- which hashes change ----------------------------------------------------------------------------


def ancestors(plan: dict[str, Any], job_id: str) -> set[str]:
    by_id = {job["id"]: job for job in plan["jobs"]}
    out: set[str] = set()
    todo = [job_id]
    while todo:
        for parent in by_id[todo.pop()]["depends_on"]:
            if parent not in out:
                out.add(parent)
                todo.append(parent)
    return out


def compile_plan(tmp_path: Path, recipe: Path, *sets: str, tag: str) -> dict[str, Any]:
    args: list[object] = ["compile", recipe, "-o", tmp_path / tag]
    for s in sets:
        args += ["--set", s]
    result = run_main(args)
    assert result.code == 0, result.err
    return load_plan(next((tmp_path / tag).iterdir()))


def check_lr_change(old: dict[str, Any], new: dict[str, Any], stage: str) -> set[str]:
    """Changing `stage`'s lr: its training job and every descendant change; ancestors and unrelated jobs do not.

    Returns the jobs that did not change and are neither ancestors nor descendants (siblings)."""
    before, after = hashes(old), hashes(new)
    assert sorted(before) == sorted(after)
    changed = {job for job in before if before[job] != after[job]}
    assert stage in changed, "the stage's own job must change"
    # Jobs of the stage that hold the lr (an RL trainer's control runs too) change; a job of the stage whose
    # config does not hold the lr (a rollout sidecar, a generation job) only changes if an ancestor did.
    roots = {j["id"] for j in new["jobs"] if j["stage"] == stage and j["config"].get("optim", {}).get("lr") is not None}
    affected = roots.union(*(descendants(new, r) for r in roots))
    assert changed == affected, (sorted(changed), sorted(affected))
    for root in roots:
        assert not (ancestors(new, root) & changed), "an ancestor's hash changed"
    return set(before) - affected - set().union(*(ancestors(new, r) for r in roots))


@pytest.mark.parametrize("stage", ["pretrain", "midtrain", "long-context", "sft", "dpo", "rlvr"])
def test_lr_change_moves_exactly_the_stage_and_itsdescendants(tmp_path: Path, stage: str) -> None:
    old = compile_plan(tmp_path, TINY, tag="old")
    new = compile_plan(tmp_path, TINY, f"stages.{stage}.lr=7.5e-4", tag="new")
    [job] = [j for j in new["jobs"] if j["id"] == stage]
    assert job["config"]["optim"]["lr"] == 7.5e-4
    check_lr_change(old, new, stage)


BRANCHES = MINIMAL + """\
  - name: sft-a
    kind: sft
    from: pretrain
    dataset: {path: ./a}
    lr: 1.0e-4
    global_batch_sequences: 8
    micro_batch_size: 4
    steps: 10
  - name: sft-b
    kind: sft
    from: pretrain
    dataset: {path: ./b}
    lr: 1.0e-4
    global_batch_sequences: 8
    micro_batch_size: 4
    steps: 10
  - name: dpo-a
    kind: dpo
    from: sft-a
    pairs: {path: ./p}
    lr: 1.0e-6
    global_batch_sequences: 8
    steps: 10
"""


def test_lr_change_leaves_sibling_branches_alone(tmp_path: Path) -> None:
    recipe = tmp_path / "branches.yaml"
    recipe.write_text(BRANCHES)
    old = compile_plan(tmp_path, recipe, tag="old")
    new = compile_plan(tmp_path, recipe, "stages.sft-a.lr=3e-4", tag="new")
    siblings = check_lr_change(old, new, "sft-a")
    assert siblings == {"sft-b"}
    assert hashes(new)["dpo-a"] != hashes(old)["dpo-a"]
    assert hashes(new)["pretrain"] == hashes(old)["pretrain"]


def test_text_that_is_not_config_does_not_move_hashes(tmp_path: Path) -> None:
    old = compile_plan(tmp_path, TINY, tag="old")
    new = compile_plan(tmp_path, TINY, "description=something else entirely", tag="new")
    assert hashes(old) == hashes(new)
    assert new["recipe"]["description"] == "something else entirely"


def test_setting_a_value_to_what_it_already_is_keeps_every_hash(tmp_path: Path) -> None:
    old = compile_plan(tmp_path, TINY, tag="old")
    new = compile_plan(tmp_path, TINY, "stages.sft.lr=1.0e-3", "model.n_kv_heads=2", tag="new")
    assert hashes(old) == hashes(new)
