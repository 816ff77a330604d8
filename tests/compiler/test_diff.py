"""Tests of `recipe diff` (compiler/diff.py, compiler/git_source.py) and the `recipe git-diff` driver.

Golden files: tests/golden/diff/<case>.<txt|md|json>, compared exactly. The diffs show the
compiler's estimates (memory, GPU-hours), so an intended change to the estimates or the plan
changes them; regenerate and review with

    UPDATE_GOLDEN=1 python -m pytest tests/compiler/test_diff.py
    git diff tests/golden/diff

The git tests build throwaway repositories under tmp_path with the shipped recipes (isolated from
the user's git configuration).
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import descendants

from compiler.build import compile_recipe
from compiler.cli import main
from compiler.diff import compare, render_json, render_text, run_diff
from compiler.plan import Job, assign_hashes

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "diff"
OLMO = ["recipes/olmo3-7b-think.yaml", "recipes/olmo3-7b-think-mha.yaml"]
TINY_SFT_LR = ["recipes/tiny-think.yaml", "recipes/tiny-think.yaml", "--set-new", "stages.sft.lr=2e-4"]
GOLDEN_CASES = {
    "olmo3-mha.txt": [*OLMO],
    "olmo3-mha.md": [*OLMO, "--format", "markdown"],
    "olmo3-mha.json": [*OLMO, "--format", "json"],
    "tiny-sft-lr.txt": [*TINY_SFT_LR],
    "tiny-sft-lr.md": [*TINY_SFT_LR, "--format", "markdown"],
    "tiny-sft-lr.json": [*TINY_SFT_LR, "--format", "json"],
}
GIB = 1024**3


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def diff_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    code, out, err = run_cli(capsys, "diff", *argv, "--format", "json")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture
def at_root(monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(ROOT)
    return ROOT


# ---------------------------------------------------------------- golden files


@pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
def test_golden(case: str, at_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "diff", *GOLDEN_CASES[case])
    assert code == 0, err
    golden = GOLDEN / case
    if os.environ.get("UPDATE_GOLDEN"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(out, encoding="utf-8")
    assert out == golden.read_text(encoding="utf-8"), f"{golden} differs: rerun with UPDATE_GOLDEN=1 if the change is intended"
    assert "\033" not in out  # no colour when stdout is not a terminal


# ---------------------------------------------------------------- what the diffs say


def test_mha_costs_rl_memory_and_gpu_hours(at_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = diff_json(capsys, *OLMO)
    jobs = {j["id"]: j for j in data["jobs"]}
    rollout = jobs["rlvr-rollout"]
    assert rollout["change"] == "update" and rollout["reruns"]
    assert {"path": "config.model.n_kv_heads", "old": 8, "new": 32} in rollout["fields"]
    # 4x the KV cache: the rollout sidecar's memory more than doubles, and generation takes longer
    assert rollout["new"]["memory_per_gpu_bytes"] > 2 * rollout["old"]["memory_per_gpu_bytes"]
    assert rollout["new"]["memory_per_gpu_bytes"] > 60 * GIB
    assert rollout["new"]["gpu_hours"] > 1.5 * rollout["old"]["gpu_hours"]
    assert jobs["rlvr"]["new"]["gpu_hours"] > jobs["rlvr"]["old"]["gpu_hours"]
    summary = data["summary"]
    assert summary["gpu_hours"]["delta"] > 0 and summary["add"] == summary["remove"] == 0
    assert summary["rerun"] == len(data["jobs"]) and summary["unchanged"] >= 1
    rl_stage = next(s for s in data["stages"] if s["stage"] == "rlvr")
    assert rl_stage["delta"] > 0

    code, text, _ = run_cli(capsys, "diff", *OLMO)
    lines = text.splitlines()
    at = lines.index(next(line for line in lines if line.startswith("  ~ rlvr-rollout")))
    block = "\n".join(lines[at : at + 4])
    assert "config.model.n_kv_heads: 8 → 32" in block
    assert "memory/GPU 26.5 → 71.1" in block and "GPU-h 3,517 → " in block, block
    assert lines[-2].startswith("Plan: 0 to add, ") and "GPU-hours 1" in lines[-2] and "peak GPUs" in lines[-2]


def test_sft_lr_reruns_sft_and_descendants_only(at_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = diff_json(capsys, *TINY_SFT_LR)
    plan = compile_recipe("recipes/tiny-think.yaml").plan
    below = descendants(plan, "sft")
    assert {"dpo", "rlvr"} <= below
    rerun = {j["id"] for j in data["jobs"] if j["reruns"]}
    assert rerun == {"sft"} | below
    jobs = {j["id"]: j for j in data["jobs"]}
    assert jobs["sft"]["change"] == "update"
    assert jobs["sft"]["fields"] == [{"path": "config.optim.lr", "old": 0.001, "new": 0.0002}]
    assert all(jobs[j]["change"] == "rerun" and jobs[j]["fields"] == [] for j in below)
    upstream = {j["id"] for j in plan["jobs"]} - rerun
    assert {"pretrain", "midtrain", "long-context"} <= upstream
    assert set(data["summary"]["unchanged_jobs"]) == upstream
    # plan order of the new plan
    order = [j["id"] for j in plan["jobs"]]
    assert [j["id"] for j in data["jobs"]] == [j for j in order if j in rerun]


def test_set_applies_to_both_sides(at_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = diff_json(capsys, "recipes/tiny-think.yaml", "recipes/tiny-think.yaml", "--set", "stages.sft.lr=2e-4")
    assert data["jobs"] == [] and data["summary"]["unchanged"] == len(compile_recipe("recipes/tiny-think.yaml").plan["jobs"])
    code, out, _ = run_cli(capsys, "diff", "recipes/tiny-think.yaml", "recipes/tiny-think.yaml")
    assert "No changes" in out and "0 to change" in out


def test_time_limit_is_no_rerun(at_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = diff_json(capsys, "recipes/tiny-think.yaml", "recipes/tiny-think.yaml", "--set-new", "stages.pretrain.resources.time_limit=05:00:00")
    [job] = data["jobs"]
    assert job["id"] == "pretrain" and job["change"] == "none-resources-only" and not job["reruns"]
    assert [f["path"] for f in job["fields"]] == ["resources.time_limit"]
    assert data["summary"]["change"] == 1 and data["summary"]["rerun"] == 0
    code, out, _ = run_cli(capsys, "diff", "recipes/tiny-think.yaml", "recipes/tiny-think.yaml", "--set-new", "stages.pretrain.resources.time_limit=05:00:00")
    assert "~ pretrain  no rerun" in out and "(0 rerun)" in out


def test_rollout_sidecar_reruns_with_its_trainer(at_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = diff_json(capsys, *OLMO[:1], *OLMO[:1], "--set-new", "stages.rlvr.lr=2e-6")
    jobs = {j["id"]: j for j in data["jobs"]}
    assert set(jobs) == {"rlvr", "rlvr-rollout", "eval-rlvr"}
    assert jobs["rlvr"]["change"] == "update"
    assert jobs["rlvr-rollout"]["change"] == "rerun" and "group" in jobs["rlvr-rollout"]["reason"]
    assert jobs["eval-rlvr"]["change"] == "rerun" and "parent changed" in jobs["eval-rlvr"]["reason"]


# ---------------------------------------------------------------- synthetic plans: add, remove, limits


def _plan(*jobs: Job) -> dict[str, Any]:
    job_list = list(jobs)
    assign_hashes(job_list)
    data = [j.to_json() for j in job_list]
    return {"recipe": {"name": "r"}, "cluster": {}, "jobs": data,
            "totals": {"gpu_hours": sum(j["estimates"]["gpu_hours"] for j in data), "max_gpus": max(j["resources"]["gpus"] for j in data)}}


def _job(id: str, config: dict[str, Any], depends_on: list[str] = (), gpus: int = 8, gpu_hours: float = 10.0, **resources: Any) -> Job:
    return Job(id=id, stage=id, kind="sft", entry="runtime.x", config=config, depends_on=list(depends_on),
               resources={"gpus": gpus, "time_limit": "01:00:00", **resources},
               estimates={"gpu_hours": gpu_hours, "memory_per_gpu_bytes": 10 * GIB, "wall_hours": 1.0})


def test_add_remove_order_and_field_limit() -> None:
    many = {f"k{i:02d}": i for i in range(20)}
    old = _plan(_job("a", {"x": 1}), _job("gone", {"y": [1, 2]}), _job("b", many, ["a"]))
    new = _plan(_job("a", {"x": 1}), _job("b", {**{k: v + 1 for k, v in many.items()}, "lst": [1, 2, 3]}, ["a"]),
                _job("c", {"z": 1}, ["b"], gpus=16, gpu_hours=5.0))
    data = compare(old, new, "old.yaml", "new.yaml")
    assert [(j["id"], j["change"]) for j in data["jobs"]] == [("b", "update"), ("c", "add"), ("gone", "remove")]
    b = data["jobs"][0]
    assert len(b["fields"]) == 21
    assert json.loads(render_json(data))["jobs"][0]["fields"][-1] == {"path": "config.lst", "old": None, "new": [1, 2, 3]}  # absent: null
    assert data["summary"]["unchanged_jobs"] == ["a"]
    assert data["summary"]["peak_gpus"] == {"old": 8, "new": 16}
    text = render_text(data)
    assert "… and 9 more" in text
    assert "  + c " in text and "  - gone " in text and "GPU-h 10.00 (-10.00)" in text
    assert "Plan: 1 to add, 1 to change (1 rerun), 1 to remove, 1 unchanged." in text
    assert "config.k00: 0 → 1" in text and "config.k12" not in text


def test_colour_only_when_asked(at_root: Path) -> None:
    args = ("recipes/tiny-think.yaml", "recipes/tiny-think.yaml", "text", (), )
    plain = run_diff(*args, new_sets=["stages.sft.lr=2e-4"])
    coloured = run_diff(*args, new_sets=["stages.sft.lr=2e-4"], color=True)
    assert "\033" not in plain and "\033[33m  ~ sft" in coloured


def test_file_with_colon_is_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copy(ROOT / "recipes" / "tiny-think.yaml", tmp_path / "HEAD:tiny.yaml")
    shutil.copytree(ROOT / "recipes" / "evals", tmp_path / "evals")
    monkeypatch.chdir(tmp_path)  # not a git repository: REV:path would fail
    code, out, err = run_cli(capsys, "diff", "HEAD:tiny.yaml", str(ROOT / "recipes" / "tiny-think.yaml"))
    assert code == 0 and "No changes" in out, err


# ---------------------------------------------------------------- git: REV:path


def _git_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=str(tmp_path / "no-gitconfig"), HOME=str(tmp_path),
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return env


def git(repo: Path, *args: str, env: dict[str, str]) -> str:
    result = subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict[str, str]]:
    """A git repository with the shipped recipes and a variant of tiny-think, committed; cwd inside it."""
    env = _git_env(tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in [k for k in os.environ if k.startswith("GIT_") and k not in env]:
        monkeypatch.delenv(key)
    repo = tmp_path / "repo"
    (repo / "recipes").mkdir(parents=True)
    for recipe in (ROOT / "recipes").glob("*.yaml"):
        shutil.copy(recipe, repo / "recipes" / recipe.name)
    shutil.copytree(ROOT / "recipes" / "evals", repo / "recipes" / "evals")
    (repo / "recipes" / "tiny-variant.yaml").write_text("extends: tiny-think.yaml\nname: tiny-variant\n")
    git(repo, "init", "-q", ".", env=env)
    git(repo, "add", ".", env=env)
    git(repo, "commit", "-q", "-m", "recipes", env=env)
    monkeypatch.chdir(repo)
    return repo, env


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new))


def _edit_sft_lr(path: Path) -> None:
    """Set the sft stage's lr to 2e-4 (the first `lr: 1.0e-3` after `- name: sft `)."""
    text = path.read_text()
    at = text.index("- name: sft ")
    head, tail = text[:at], text[at:]
    path.write_text(head + tail.replace("lr: 1.0e-3", "lr: 2.0e-4", 1))


def test_rev_path_against_working_file(repo: tuple[Path, dict[str, str]], capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = repo
    _edit_sft_lr(path / "recipes" / "tiny-think.yaml")
    data = diff_json(capsys, "HEAD:recipes/tiny-think.yaml", "recipes/tiny-think.yaml")
    jobs = {j["id"]: j for j in data["jobs"]}
    assert jobs["sft"]["fields"] == [{"path": "config.optim.lr", "old": 0.001, "new": 0.0002}]
    assert "pretrain" in data["summary"]["unchanged_jobs"]
    assert data["old"]["source"] == "HEAD:recipes/tiny-think.yaml"
    # the same file at the same revision on both sides, and ./ relative to the working directory
    data = diff_json(capsys, "HEAD:recipes/tiny-think.yaml", "HEAD:./recipes/tiny-think.yaml")
    assert data["jobs"] == []


def test_rev_path_extends_from_the_same_revision(repo: tuple[Path, dict[str, str]], capsys: pytest.CaptureFixture[str]) -> None:
    path, env = repo
    _edit(path / "recipes" / "tiny-think.yaml", "n_kv_heads: 2 ", "n_kv_heads: 1 ")  # the base changes in the working tree
    data = diff_json(capsys, "HEAD:recipes/tiny-variant.yaml", "recipes/tiny-variant.yaml")
    pretrain = next(j for j in data["jobs"] if j["id"] == "pretrain")
    assert {"path": "config.model.n_kv_heads", "old": 2, "new": 1} in pretrain["fields"]  # HEAD's variant used HEAD's base
    # and an older revision of the base: commit the change, then compare HEAD~1 with HEAD
    git(path, "commit", "-q", "-am", "mqa", env=env)
    data = diff_json(capsys, "HEAD~1:recipes/tiny-variant.yaml", "HEAD:recipes/tiny-variant.yaml")
    assert {"path": "config.model.n_kv_heads", "old": 2, "new": 1} in next(j for j in data["jobs"] if j["id"] == "pretrain")["fields"]


@pytest.mark.parametrize("spec, message", [
    ("HEAD~5:recipes/tiny-think.yaml", "unknown git revision 'HEAD~5'"),
    ("no-such-branch:recipes/tiny-think.yaml", "unknown git revision 'no-such-branch'"),
    ("HEAD:recipes/nope.yaml", "no file 'recipes/nope.yaml' in git revision 'HEAD'"),
    ("HEAD:recipes", "no file 'recipes' in git revision 'HEAD'"),
    ("--output=x:recipes/tiny-think.yaml", "unknown git revision '--output=x'"),
])
def test_rev_path_errors_are_one_line(spec: str, message: str, repo: tuple[Path, dict[str, str]], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "diff", "--", spec, "recipes/tiny-think.yaml")
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [f"{spec}:1:1: {message}"]


def test_rev_path_outside_a_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "diff", "HEAD:recipes/tiny-think.yaml", str(ROOT / "recipes" / "tiny-think.yaml"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "not inside a git repository" in err


def test_rev_path_errors_name_the_revision(repo: tuple[Path, dict[str, str]], capsys: pytest.CaptureFixture[str]) -> None:
    path, env = repo
    _edit(path / "recipes" / "tiny-think.yaml", "n_kv_heads: 2 ", "n_kv_heads: 4 ")  # 6 heads are not a multiple of 4
    git(path, "commit", "-q", "-am", "broken", env=env)
    code, out, err = run_cli(capsys, "diff", "HEAD:recipes/tiny-variant.yaml", "HEAD~1:recipes/tiny-variant.yaml")
    assert code == 2 and err
    for line in err.strip().splitlines():
        assert line.startswith("HEAD:recipes/tiny-think.yaml:"), line  # the base, as it is at HEAD
        assert "recipe-git-" not in line


# ---------------------------------------------------------------- git: the external diff driver


@pytest.fixture
def driver_repo(repo: tuple[Path, dict[str, str]]) -> tuple[Path, dict[str, str]]:
    path, env = repo
    (path / ".gitattributes").write_text((ROOT / ".gitattributes").read_text())
    git(path, "config", "diff.recipe.command", f"{shlex.quote(sys.executable)} -m compiler.cli git-diff", env=env)
    git(path, "add", ".gitattributes", env=env)
    git(path, "commit", "-q", "-m", "attributes", env=env)
    return path, env


def test_git_diff_driver(driver_repo: tuple[Path, dict[str, str]]) -> None:
    path, env = driver_repo
    _edit_sft_lr(path / "recipes" / "tiny-think.yaml")
    out = git(path, "diff", env=env)
    lines = out.splitlines()
    assert lines[0] == "recipe diff a/recipes/tiny-think.yaml b/recipes/tiny-think.yaml"
    assert "      config.optim.lr: 0.001 → 0.0002" in lines
    assert any(line.startswith("  ~ sft ") and "reruns: config changed" in line for line in lines)
    assert any(line.startswith("Plan: 0 to add, ") for line in lines)
    assert "@@" not in out  # our diff, not git's

    # git runs the driver from the top of the working tree, wherever `git diff` was typed
    sub = git(path / "recipes", "diff", "--", "tiny-think.yaml", env=env)
    assert sub == out


def test_git_diff_driver_added_removed_and_broken(driver_repo: tuple[Path, dict[str, str]]) -> None:
    path, env = driver_repo
    n_jobs = len(compile_recipe(ROOT / "recipes" / "tiny-think.yaml").plan["jobs"])
    shutil.copy(path / "recipes" / "tiny-think.yaml", path / "recipes" / "tiny-copy.yaml")
    git(path, "add", "recipes/tiny-copy.yaml", env=env)
    out = git(path, "diff", "--cached", env=env)
    assert out.splitlines()[:2] == ["recipe diff a/recipes/tiny-copy.yaml b/recipes/tiny-copy.yaml", "  new file: every job is added"]
    assert f"Plan: {n_jobs} to add, 0 to change (0 rerun), 0 to remove, 0 unchanged." in out
    git(path, "commit", "-q", "-m", "copy", env=env)

    git(path, "rm", "-q", "recipes/tiny-copy.yaml", env=env)
    out = git(path, "diff", "--cached", env=env)
    assert "  deleted file: every job is removed" in out and f"0 to change (0 rerun), {n_jobs} to remove" in out
    git(path, "reset", "-q", "--hard", env=env)

    # a side that does not compile: the error and a plain diff, and git carries on (exit 0)
    with (path / "recipes" / "tiny-think.yaml").open("a") as f:
        f.write("broken: [\n")
    out = git(path, "diff", env=env)
    assert "recipe: cannot compile both sides, showing a plain diff:" in out
    assert "+broken: [" in out and "YAML" in out
