"""`extends` (variants of a base recipe) and `--set` overrides, typed by the schema."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest

from conftest import DIAGNOSTIC, MINIMAL, TINY, edit, run_main


def compile_ok(recipe: Path, out: Path, *sets: str) -> dict[str, Any]:
    args: list[object] = ["compile", recipe, "-o", out]
    for s in sets:
        args += ["--set", s]
    result = run_main(args)
    assert result.code == 0, result.err
    [build] = list(out.iterdir())
    return json.loads((build / "plan.json").read_text(encoding="utf-8"))


def compile_fails(recipe: Path, out: Path, *sets: str) -> list[str]:
    args: list[object] = ["compile", recipe, "-o", out]
    for s in sets:
        args += ["--set", s]
    result = run_main(args)
    assert result.code == 2, (result.code, result.out, result.err)
    assert result.out == "" and not out.exists() and "Traceback" not in result.err
    lines = result.err.splitlines()
    assert lines and all(DIAGNOSTIC.match(line) for line in lines), lines
    return lines


def job(plan: dict[str, Any], job_id: str) -> dict[str, Any]:
    [found] = [j for j in plan["jobs"] if j["id"] == job_id]
    return found


def differences(a: Any, b: Any, path: tuple = ()) -> list[tuple]:
    """Paths where two JSON trees differ (jobs matched by id, hashes ignored)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            if key == "hash":
                continue
            if key not in a or key not in b:
                out.append((*path, key))
            else:
                out += differences(a[key], b[key], (*path, key))
        return out
    if isinstance(a, list) and isinstance(b, list):
        if all(isinstance(x, dict) and "id" in x for x in a + b):
            return differences({x["id"]: x for x in a}, {x["id"]: x for x in b}, path)
        if len(a) != len(b):
            return [path]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, (*path, i))]
    return [] if a == b and type(a) is type(b) else [path]


@pytest.fixture
def tiny_copy(tmp_path: Path) -> Path:
    """tiny-think copied beside the variants a test writes."""
    base = tmp_path / "recipes" / "tiny-think.yaml"
    base.parent.mkdir()
    base.write_text(TINY.read_text(encoding="utf-8"), encoding="utf-8")
    shutil.copytree(TINY.parent / "evals", base.parent / "evals")
    return base


# --- extends ------------------------------------------------------------------------------------


def test_variant_changes_one_stage_by_name(tmp_path: Path, tiny_copy: Path) -> None:
    variant = tiny_copy.parent / "variant.yaml"
    variant.write_text("extends: tiny-think.yaml\nstages:\n  - name: sft\n    lr: 2.0e-5\n")
    base_plan = compile_ok(tiny_copy, tmp_path / "base")
    variant_plan = compile_ok(variant, tmp_path / "variant")
    assert [j["id"] for j in variant_plan["jobs"]] == [j["id"] for j in base_plan["jobs"]]  # order kept, no new stage
    diffs = [d for d in differences(base_plan, variant_plan) if d[0] not in ("recipe_dir", "totals")]
    assert diffs == [("jobs", "sft", "config", "optim", "lr")], diffs
    assert job(variant_plan, "sft")["config"]["optim"]["lr"] == 2.0e-5
    # ... and the hashes move from sft down, not above it.
    assert job(variant_plan, "sft")["hash"] != job(base_plan, "sft")["hash"]
    assert job(variant_plan, "dpo")["hash"] != job(base_plan, "dpo")["hash"]
    assert job(variant_plan, "long-context")["hash"] == job(base_plan, "long-context")["hash"]


def test_variant_with_a_new_stage_appends_it(tmp_path: Path, tiny_copy: Path) -> None:
    variant = tiny_copy.parent / "variant.yaml"
    variant.write_text(
        "extends: tiny-think.yaml\nstages:\n"
        "  - name: sft-again\n    kind: sft\n    from: sft\n    dataset: {path: ../data/toy/sft}\n"
        "    lr: 1.0e-5\n    global_batch_sequences: 16\n    micro_batch_size: 8\n    seq_len: 256\n    steps: 10\n"
    )
    plan = compile_ok(variant, tmp_path / "out")
    assert [j["id"] for j in plan["jobs"][-2:]] == ["sft-again", "eval-sft-again"]
    assert job(plan, "sft-again")["depends_on"] == ["decontaminate", "sft"]  # its dataset is checked first


def test_variant_null_clears_a_base_block(tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text(edit(MINIMAL, "  max_seq_len: 128\n", "  max_seq_len: 128\n  sliding_window: {size: 64}\n"))
    variant = tmp_path / "variant.yaml"
    variant.write_text("extends: base.yaml\nmodel:\n  sliding_window: null\n")
    assert job(compile_ok(base, tmp_path / "a"), "pretrain")["config"]["model"]["sliding_window"]["size"] == 64
    assert job(compile_ok(variant, tmp_path / "b"), "pretrain")["config"]["model"]["sliding_window"] is None


def test_variant_replaces_lists_other_than_stages(tmp_path: Path, tiny_copy: Path) -> None:
    variant = tiny_copy.parent / "variant.yaml"
    variant.write_text("extends: tiny-think.yaml\nstages:\n  - name: rlvr\n    rewards: [{verifier: format}]\n")
    rewards = job(compile_ok(variant, tmp_path / "out"), "rlvr")["config"]["rl"]["rewards"]
    assert rewards == [{"verifier": "format", "weight": 1.0}]


def test_a_mapping_that_changes_kind_replaces_the_base(tmp_path: Path, tiny_copy: Path) -> None:
    variant = tiny_copy.parent / "variant.yaml"
    variant.write_text("extends: tiny-think.yaml\nname: v\nstages:\n  - name: sft\n    schedule: {kind: constant}\n")
    schedule = job(compile_ok(variant, tmp_path / "out"), "sft")["config"]["optim"]["schedule"]
    # the base's cosine warmup_steps (5) is not carried into the constant schedule: its default (0) holds
    assert schedule["kind"] == "constant" and schedule["warmup_steps"] == 0
    base_schedule = job(compile_ok(tiny_copy, tmp_path / "base"), "sft")["config"]["optim"]["schedule"]
    assert base_schedule["kind"] == "cosine" and base_schedule["warmup_steps"] == 5


def test_variant_merges_mappings_key_by_key(tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text(MINIMAL)
    variant = tmp_path / "variant.yaml"
    variant.write_text("extends: base.yaml\nname: mini-wide\nmodel:\n  d_model: 128\n")
    plan = compile_ok(variant, tmp_path / "out")
    model = job(plan, "pretrain")["config"]["model"]
    assert (model["d_model"], model["n_layers"], model["n_heads"]) == (128, 2, 4)
    assert plan["recipe"]["name"] == "mini-wide"


def test_extends_chain_of_three(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(MINIMAL)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yaml").write_text("extends: ../a.yaml\nmodel: {n_layers: 3}\n")
    (tmp_path / "c.yaml").write_text("extends: sub/b.yaml\nstages:\n  - name: pretrain\n    steps: 20\n")
    plan = compile_ok(tmp_path / "c.yaml", tmp_path / "out")
    config = job(plan, "pretrain")["config"]
    assert config["model"]["n_layers"] == 3 and config["scale"]["steps"] == 20


def test_variant_errors_point_at_the_variant(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(MINIMAL)
    text = "extends: base.yaml\nstages:\n  - name: pretrain\n    lr: fast\n"
    (tmp_path / "variant.yaml").write_text(text)
    [line] = compile_fails(tmp_path / "variant.yaml", tmp_path / "out")
    assert line.startswith(f"{tmp_path / 'variant.yaml'}:4:9: stages[0].lr: "), line


# --- --set --------------------------------------------------------------------------------------


def test_set_stage_lr_is_a_float(tmp_path: Path) -> None:
    plan = compile_ok(TINY, tmp_path / "out", "stages.sft.lr=2e-5")
    lr = job(plan, "sft")["config"]["optim"]["lr"]
    assert lr == 2e-5 and isinstance(lr, float)


def test_set_by_stage_index(tmp_path: Path) -> None:
    plan = compile_ok(TINY, tmp_path / "out", "stages.5.lr=2e-5")
    assert job(plan, "sft")["config"]["optim"]["lr"] == 2e-5


def test_set_model_int(tmp_path: Path) -> None:
    plan = compile_ok(TINY, tmp_path / "out", "model.n_kv_heads=3")
    value = job(plan, "pretrain")["config"]["model"]["n_kv_heads"]
    assert value == 3 and type(value) is int


def test_set_text_keeps_the_string(tmp_path: Path) -> None:
    plan = compile_ok(TINY, tmp_path / "out", "description=123")
    assert plan["recipe"]["description"] == "123"


@pytest.mark.parametrize("text", ["[1, 2]", "true", "null-ish", "a: b", "1e-5", "  padded  "])
def test_set_text_is_never_parsed_as_yaml(tmp_path: Path, text: str) -> None:
    plan = compile_ok(TINY, tmp_path / "out", f"description={text}")
    assert plan["recipe"]["description"] == text


def test_set_null_on_a_field_that_cannot_be_null_restores_its_default(tmp_path: Path) -> None:
    """`null` clears: an optional block becomes None, a field that cannot be None falls back to its default."""
    plan = compile_ok(TINY, tmp_path / "out", "description=null")
    assert plan["recipe"]["description"] == ""
    plan = compile_ok(TINY, tmp_path / "out", "stages.pretrain.grad_clip=null")
    assert job(plan, "pretrain")["config"]["optim"]["grad_clip"] is None


def test_set_null_on_a_required_field_is_a_located_error(tmp_path: Path) -> None:
    [line] = compile_fails(TINY, tmp_path / "out", "stages.sft.lr=null")
    assert line.endswith("stages[5].lr: required field is missing"), line


def test_set_steps_null_falls_back_to_tokens(tmp_path: Path) -> None:
    """pretrain gives tokens, not steps: clearing steps keeps it valid, with steps derived from tokens."""
    plan = compile_ok(TINY, tmp_path / "out", "stages.pretrain.steps=null")
    scale = job(plan, "pretrain")["config"]["scale"]
    assert scale["steps"] == math.ceil(2_000_000 / (16 * 256))


def test_set_steps_where_tokens_are_given_is_an_error(tmp_path: Path) -> None:
    lines = compile_fails(TINY, tmp_path / "out", "stages.pretrain.steps=100")
    assert any("give steps or tokens, not both" in line for line in lines), lines


def test_set_steps_and_clear_tokens(tmp_path: Path) -> None:
    plan = compile_ok(TINY, tmp_path / "out", "stages.pretrain.steps=100", "stages.pretrain.tokens=null")
    assert job(plan, "pretrain")["config"]["scale"]["steps"] == 100


def test_set_steps_null_without_tokens_is_an_error(tmp_path: Path) -> None:
    lines = compile_fails(TINY, tmp_path / "out", "stages.sft.steps=null")
    assert len(lines) == 1 and "give steps or tokens" in lines[0], lines


def test_set_null_clears_a_block(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(edit(MINIMAL, "  max_seq_len: 128\n", "  max_seq_len: 128\n  sliding_window: {size: 64, global_every: 2}\n"))
    before = compile_ok(recipe, tmp_path / "a")
    after = compile_ok(recipe, tmp_path / "b", "model.sliding_window=null")
    assert job(before, "pretrain")["config"]["model"]["sliding_window"]["global_every"] == 2
    assert job(after, "pretrain")["config"]["model"]["sliding_window"] is None


def test_set_creates_a_missing_block(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(MINIMAL)
    plan = compile_ok(recipe, tmp_path / "out", "model.sliding_window.size=32")
    assert job(plan, "pretrain")["config"]["model"]["sliding_window"]["size"] == 32


def test_set_unknown_stage_name_suggests_one(tmp_path: Path) -> None:
    [line] = compile_fails(TINY, tmp_path / "out", "stages.sfx.lr=1e-5")
    assert line.startswith("<--set stages.sfx.lr=1e-5>:1:"), line
    assert "did you mean 'sft'" in line


def test_set_unknown_field_suggests_one(tmp_path: Path) -> None:
    [line] = compile_fails(TINY, tmp_path / "out", "stages.sft.lrr=1e-5")
    assert line.startswith("<--set stages.sft.lrr=1e-5>:1:"), line
    assert "stages[5].lrr" in line and "did you mean 'lr'" in line


def test_set_wrong_type_is_located_in_the_assignment(tmp_path: Path) -> None:
    assignment = "stages.sft.steps=many"
    [line] = compile_fails(TINY, tmp_path / "out", assignment)
    # The column is where the value starts in PATH=VALUE.
    assert line.startswith(f"<--set {assignment}>:1:{assignment.index('=') + 2}: stages[5].steps: "), line


@pytest.mark.parametrize("assignment", ["no-equals-sign", "=3", "stages..lr=1"])
def test_malformed_set(tmp_path: Path, assignment: str) -> None:
    [line] = compile_fails(TINY, tmp_path / "out", assignment)
    assert "path.to.field=value" in line


def test_later_set_wins(tmp_path: Path) -> None:
    plan = compile_ok(TINY, tmp_path / "out", "stages.sft.lr=1e-5", "stages.sft.lr=3e-5")
    assert job(plan, "sft")["config"]["optim"]["lr"] == 3e-5


# --- cluster profiles ---------------------------------------------------------------------------

SLURM = edit(edit(MINIMAL, "cluster: local", "cluster: {profile: h100-80gb, account: myacct}"),
             "global_batch_sequences: 8", "global_batch_sequences: 32")


def test_cluster_profile_with_overrides(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(SLURM)
    plan = compile_ok(recipe, tmp_path / "out")
    assert plan["cluster"]["account"] == "myacct"
    assert plan["cluster"]["name"] == "h100-80gb" and plan["cluster"]["partition"] == "gpu"  # the rest of the profile
    assert job(plan, "pretrain")["resources"]["account"] == "myacct"
    sbatch = (tmp_path / "out" / "mini" / "jobs" / "pretrain" / "job.sbatch").read_text()
    assert "#SBATCH --account=myacct" in sbatch.splitlines()


def test_set_overrides_a_profile_field(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(SLURM)
    plan = compile_ok(recipe, tmp_path / "out", "cluster.account=other", "cluster.qos=high")
    assert (plan["cluster"]["account"], plan["cluster"]["qos"]) == ("other", "high")
    assert job(plan, "pretrain")["resources"]["qos"] == "high"


def test_set_switches_the_cluster_profile(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(edit(MINIMAL, "global_batch_sequences: 8", "global_batch_sequences: 32"))
    plan = compile_ok(recipe, tmp_path / "out", "cluster=h100-80gb")
    assert plan["cluster"]["kind"] == "slurm"
    assert job(plan, "pretrain")["resources"]["gpus"] == 8


def test_account_on_a_local_cluster_is_an_unknown_key(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(MINIMAL)
    [line] = compile_fails(recipe, tmp_path / "out", "cluster.account=x")
    assert "cluster.account" in line and "unknown key" in line
