"""User mistakes: exit code 2, nothing on stdout, nothing written, and one `FILE:LINE:COL: PATH: message` line each."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import DIAGNOSTIC, MINIMAL, RECIPES, CliResult, col_of, edit, line_of, run_main

SFT = """\
  - name: sft
    kind: sft
    dataset: {path: ./data/sft, text_field: messages}
    lr: 1.0e-4
    global_batch_sequences: 8
    micro_batch_size: 4
    steps: 10
"""

DPO = """\
  - name: dpo
    kind: dpo
    beta: 0.1
    pairs: {path: ./data/pairs}
    lr: 1.0e-5
    global_batch_sequences: 8
    micro_batch_size: 2
    steps: 10
"""

RLVR = """\
  - name: rl
    kind: rlvr
    prompts: {path: ./data/rl}
    grpo: {group_size: 4, prompts_per_step: 2, max_response_tokens: 64}
    rewards: [{verifier: math}]
    rollout: {gpus: 0, max_model_len: 128, max_prompt_tokens: 64}
    lr: 1.0e-5
    micro_batch_size: 4
    steps: 3
"""

FULL = MINIMAL + SFT + DPO + RLVR


def display(path: Path) -> str:
    """How the compiler names a file in diagnostics: relative to the working directory when below it."""
    path = path.resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def check_failed(result: CliResult, out_dir: Path) -> list[str]:
    """The contract of every user mistake; returns the diagnostic lines."""
    assert result.code == 2, (result.code, result.err)
    assert result.out == ""
    assert "Traceback" not in result.err
    assert "internal error" not in result.err
    assert not out_dir.exists(), "a failed compile must not write (or even create) its output folder"
    lines = result.err_lines
    assert lines, "a failure must say why"
    for line in lines:
        assert DIAGNOSTIC.match(line), line
    return lines


def compile_text(tmp_path: Path, text: str, *sets: str, name: str = "r.yaml") -> tuple[Path, list[str]]:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    args = ["compile", path, "-o", out]
    for s in sets:
        args += ["--set", s]
    return path, check_failed(run_main(args), out)


def compile_warnings(tmp_path: Path, text: str, *, about: str) -> tuple[Path, list[str]]:
    """Compile `text` (it must succeed); (its path, the warning lines that mention `about`)."""
    path = tmp_path / "r.yaml"
    path.write_text(text, encoding="utf-8")
    result = run_main(["compile", path, "-o", tmp_path / "out"])
    assert result.code == 0, result.err
    return path, [line for line in result.out.splitlines() if "warning:" in line and about in line]


def compiled_jobs(out: Path) -> dict[str, dict]:
    """The jobs of the one plan compiled into `out`, by id."""
    return {job["id"]: job for job in json.loads(next(out.glob("*/plan.json")).read_text())["jobs"]}


def position(text: str, needle: str, value: str | None = None, *, occurrence: int = 1) -> str:
    """'LINE:COL' of the line holding `needle`, at the column where `value` (default `needle`) starts on it."""
    line = line_of(text, needle, occurrence=occurrence)
    return f"{line}:{text.splitlines()[line - 1].index(value or needle) + 1}"


def expect_one(tmp_path: Path, text: str, needle: str, where: str, *, value: str | None = None, occurrence: int = 1,
               name: str = "r.yaml") -> str:
    """Compile `text`; exactly one error, on the line holding `needle` at the column of `value` (default `needle`),
    with the path `where`. Returns the message (after `PATH: `)."""
    path, lines = compile_text(tmp_path, text, name=name)
    assert len(lines) == 1, lines
    prefix = f"{display(path)}:{position(text, needle, value, occurrence=occurrence)}: {where}: "
    assert lines[0].startswith(prefix), (lines[0], prefix)
    return lines[0][len(prefix):]


def test_the_base_recipes_compile(tmp_path: Path) -> None:
    """The texts the error tests edit are valid to begin with (so each error below has one cause)."""
    for i, text in enumerate([MINIMAL, FULL]):
        path = tmp_path / f"ok{i}.yaml"
        path.write_text(text, encoding="utf-8")
        result = run_main(["compile", path, "-o", tmp_path / "out"])
        assert result.code == 0, result.err
        assert (tmp_path / "out" / "mini" / "plan.json").is_file()


# --- schema errors -------------------------------------------------------------------------------


def test_unknown_key_suggests_the_closest_field(tmp_path: Path) -> None:
    text = edit(MINIMAL, "    lr: 1.0e-3\n", "    lr: 1.0e-3\n    lrr: 2.0e-3\n")
    message = expect_one(tmp_path, text, "lrr", "stages[0].lrr")
    assert "unknown key 'lrr'" in message
    assert "did you mean 'lr'" in message


def test_unknown_top_level_key(tmp_path: Path) -> None:
    text = MINIMAL + "stagse: []\n"
    message = expect_one(tmp_path, text, "stagse", "stagse")
    assert "did you mean 'stages'" in message


def test_wrong_type_points_at_the_value(tmp_path: Path) -> None:
    text = edit(MINIMAL, "steps: 10", "steps: abc")
    message = expect_one(tmp_path, text, "abc", "stages[0].steps")
    assert "integer" in message and "'abc'" in message


def test_negative_beta_in_a_dpo_stage(tmp_path: Path) -> None:
    text = edit(FULL, "beta: 0.1", "beta: -0.1")
    message = expect_one(tmp_path, text, "-0.1", "stages[2].beta")
    assert "must be > 0" in message
    assert "(got -0.1)" in message


def test_required_field_missing(tmp_path: Path) -> None:
    text = edit(MINIMAL, "  n_layers: 2\n", "")
    message = expect_one(tmp_path, text, "family", "model.n_layers")  # located at the model mapping
    assert "missing" in message


def test_unknown_stage_kind_suggests_one(tmp_path: Path) -> None:
    text = edit(MINIMAL, "kind: pretrain", "kind: pretrian")
    message = expect_one(tmp_path, text, "pretrian", "stages[0].kind")
    assert "did you mean 'pretrain'" in message
    for kind in ("pretrain", "midtrain", "long_context", "sft", "dpo", "rlvr"):
        assert kind in message


def test_float_infinity_is_a_user_error_not_an_internal_one(tmp_path: Path) -> None:
    text = edit(MINIMAL, "lr: 1.0e-3", "lr: .inf")
    message = expect_one(tmp_path, text, ".inf", "stages[0].lr")
    assert "finite" in message


def test_nan_is_rejected(tmp_path: Path) -> None:
    text = edit(MINIMAL, "lr: 1.0e-3", "lr: .nan")
    expect_one(tmp_path, text, ".nan", "stages[0].lr")


# --- YAML-level errors ---------------------------------------------------------------------------


def test_yaml_syntax_error(tmp_path: Path) -> None:
    text = edit(MINIMAL, "description: a minimal recipe", "description: a: b")
    line = line_of(text, "description: a: b")
    path, lines = compile_text(tmp_path, text)
    assert len(lines) == 1
    # PyYAML's mark for "mapping values are not allowed here" is the second ':'.
    col = text.splitlines()[line - 1].index(": b") + 1
    assert lines[0].startswith(f"{display(path)}:{line}:{col}: YAML syntax error"), lines


def test_unclosed_flow_mapping(tmp_path: Path) -> None:
    text = edit(MINIMAL, "{kind: fixed, weights: {text: 1.0}}", "{kind: fixed, weights: {text: 1.0}")
    path, lines = compile_text(tmp_path, text)
    assert len(lines) == 1 and "YAML syntax error" in lines[0], lines
    assert lines[0].startswith(f"{display(path)}:{line_of(text, 'stages:')}:"), lines


def test_duplicate_key(tmp_path: Path) -> None:
    text = edit(MINIMAL, "  d_model: 64\n", "  d_model: 64\n  d_model: 96\n")
    message = expect_one(tmp_path, text, "d_model", "model.d_model", occurrence=2)
    assert f"first set at line {line_of(text, 'd_model')}" in message


@pytest.mark.parametrize(
    ("text", "got"),
    [("- name: a\n- name: b\n", "list"), ("just a string\n", "str"), ("42\n", "int"), ("", "empty"), ("# only a comment\n", "empty")],
    ids=["list", "string", "number", "empty", "comment-only"],
)
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, got: str) -> None:
    path, lines = compile_text(tmp_path, text)
    assert len(lines) == 1
    assert lines[0].startswith(f"{display(path)}:1:1: "), lines
    assert "top level must be a mapping" in lines[0] and got in lines[0]


def test_missing_recipe_file(tmp_path: Path, run_cli) -> None:
    missing = tmp_path / "nope.yaml"
    lines = check_failed(run_cli("compile", missing, "-o", tmp_path / "out"), tmp_path / "out")
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{display(missing)}:1:1: "), lines


@pytest.mark.parametrize(
    ("old", "new"),
    [("steps: 10", "steps: abc"), ("n_kv_heads: 2", "n_kv_heads: 3"), ("cluster: local", "cluster: nope")],
    ids=["schema", "plan", "profile"],
)
def test_explain_reports_the_same_errors_as_compile(tmp_path: Path, run_cli, old: str, new: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(edit(MINIMAL, old, new))
    compiled = run_cli("compile", path, "-o", tmp_path / "out")
    explained = run_cli("explain", path)
    as_json = run_cli("explain", path, "--json")
    check_failed(compiled, tmp_path / "out")
    for result in (explained, as_json):
        assert (result.code, result.out, result.err) == (2, "", compiled.err)


def test_recipe_that_is_a_directory(tmp_path: Path) -> None:
    folder = tmp_path / "dir.yaml"
    folder.mkdir()
    lines = check_failed(run_main(["compile", folder, "-o", tmp_path / "out"]), tmp_path / "out")
    assert len(lines) == 1, lines


def test_recipe_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(MINIMAL.replace("a minimal recipe", "caf\xe9").encode("latin-1"))
    lines = check_failed(run_main(["compile", path, "-o", tmp_path / "out"]), tmp_path / "out")
    assert len(lines) == 1 and lines[0].startswith(display(path) + ":"), lines


# --- extends ------------------------------------------------------------------------------------


def test_missing_extends_file(tmp_path: Path) -> None:
    text = "extends: base-that-is-not-there.yaml\nname: variant\n"
    message = expect_one(tmp_path, text, "base-that-is-not-there.yaml", "extends")
    assert "not found" in message and "base-that-is-not-there.yaml" in message


def test_cyclic_extends(tmp_path: Path) -> None:
    a_text = "extends: b.yaml\nname: a\n"
    b_text = "extends: a.yaml\nname: b\n"
    (tmp_path / "a.yaml").write_text(a_text)
    (tmp_path / "b.yaml").write_text(b_text)
    lines = check_failed(run_main(["compile", tmp_path / "a.yaml", "-o", tmp_path / "out"]), tmp_path / "out")
    assert len(lines) == 1, lines
    # a -> b -> a: the loop closes at b's extends.
    assert lines[0].startswith(f"{display(tmp_path / 'b.yaml')}:1:{col_of(b_text, 'a.yaml')}: extends: "), lines
    assert "cyclic" in lines[0] and "a.yaml" in lines[0] and "b.yaml" in lines[0]


def test_a_recipe_extending_itself(tmp_path: Path) -> None:
    text = "extends: r.yaml\nname: r\n"
    message = expect_one(tmp_path, text, "r.yaml", "extends")
    assert "cyclic" in message


def test_extends_must_be_a_path(tmp_path: Path) -> None:
    text = "extends: [a.yaml]\nname: r\n"
    expect_one(tmp_path, text, "[a.yaml]", "extends")


def test_error_in_a_base_file_names_the_base(tmp_path: Path) -> None:
    base = edit(MINIMAL, "steps: 10", "steps: abc")
    (tmp_path / "base.yaml").write_text(base)
    variant = "extends: base.yaml\nname: variant\n"
    (tmp_path / "variant.yaml").write_text(variant)
    lines = check_failed(run_main(["compile", tmp_path / "variant.yaml", "-o", tmp_path / "out"]), tmp_path / "out")
    assert lines == [lines[0]]
    assert lines[0].startswith(f"{display(tmp_path / 'base.yaml')}:{line_of(base, 'abc')}:{col_of(base, 'abc')}: stages[0].steps: "), lines


# --- stage references ----------------------------------------------------------------------------


def test_unknown_from_stage_suggests_one(tmp_path: Path) -> None:
    text = edit(FULL, "  - name: sft\n", "  - name: sft\n    from: pretrian\n")
    message = expect_one(tmp_path, text, "pretrian", "stages[1].from")
    assert "unknown stage 'pretrian'" in message
    assert "did you mean 'pretrain'" in message


def test_from_naming_a_later_stage(tmp_path: Path) -> None:
    text = edit(FULL, "  - name: sft\n", "  - name: sft\n    from: rl\n")
    message = expect_one(tmp_path, text, "from: rl", "stages[1].from", value="rl")
    assert "later stage" in message and "'rl'" in message


def test_from_naming_its_own_stage(tmp_path: Path) -> None:
    text = edit(FULL, "  - name: sft\n", "  - name: sft\n    from: sft\n")
    message = expect_one(tmp_path, text, "from: sft", "stages[1].from", value="sft")
    assert "this stage" in message


def test_duplicate_stage_names(tmp_path: Path) -> None:
    text = edit(FULL, "  - name: dpo\n", "  - name: sft\n")
    message = expect_one(tmp_path, text, "name: sft", "stages[2].name", value="sft", occurrence=2)
    assert "duplicate stage name 'sft'" in message


# --- semantic (plan) errors ----------------------------------------------------------------------


def test_heads_not_divisible_by_kv_heads_gives_a_fix(tmp_path: Path) -> None:
    text = edit(MINIMAL, "n_kv_heads: 2", "n_kv_heads: 3")
    message = expect_one(tmp_path, text, "n_kv_heads: 3", "model.n_kv_heads", value="3")
    assert "n_heads (4)" in message and "n_kv_heads (3)" in message
    assert "use n_kv_heads 2" in message


def test_batch_arithmetic_that_does_not_divide(tmp_path: Path) -> None:
    text = edit(MINIMAL, "global_batch_sequences: 8", "global_batch_sequences: 10")
    message = expect_one(tmp_path, text, "global_batch_sequences: 10", "stages[0].global_batch_sequences", value="10")
    assert "global batch 10" in message and "micro_batch_size 4" in message
    assert "global_batch_sequences 8 or 12" in message  # the nearest batches that divide
    assert "micro_batch_size 2" in message  # or a micro batch that divides


def test_global_batch_below_one_micro_batch_suggests_each_fix_once(tmp_path: Path) -> None:
    text = edit(MINIMAL, "micro_batch_size: 4", "micro_batch_size: 16")
    message = expect_one(tmp_path, text, "global_batch_sequences: 8", "stages[0].global_batch_sequences", value="8")
    assert "use global_batch_sequences 16 or micro_batch_size 8" in message
    assert "16 or 16" not in message


@pytest.mark.parametrize("field", ["micro_batch_size: 4", "n_kv_heads: 2"])
def test_absurdly_large_integers_are_errors_quickly(tmp_path: Path, field: str) -> None:
    """Fix suggestions must not count down from the value given (1e30 used to hang the compiler)."""
    key = field.split(":")[0]
    text = edit(MINIMAL, field, f"{key}: {10**30}")
    path, lines = compile_text(tmp_path, text)
    assert any(str(10**30) in line for line in lines), lines


def test_global_batch_tokens_not_a_multiple_of_seq_len(tmp_path: Path) -> None:
    text = edit(MINIMAL, "global_batch_sequences: 8", "global_batch_tokens: 1100")
    message = expect_one(tmp_path, text, "1100", "stages[0].global_batch_tokens")
    assert "seq_len 128" in message and "use 1024 or 1152" in message


def test_seq_len_above_the_models_max(tmp_path: Path) -> None:
    text = edit(MINIMAL, "    seq_len: 128", "    seq_len: 256")
    message = expect_one(tmp_path, text, "seq_len: 256", "stages[0].seq_len", value="256")
    assert "256" in message and "max_seq_len 128" in message


def test_rollout_too_short_for_prompt_and_response(tmp_path: Path) -> None:
    text = edit(FULL, "max_response_tokens: 64", "max_response_tokens: 100")
    message = expect_one(tmp_path, text, "max_model_len: 128", "stages[3].rollout.max_model_len", value="128")
    assert "64 + grpo.max_response_tokens 100 = 164" in message
    assert "raise max_model_len to 164" in message


def test_sampling_rounds_without_active_sampling_is_a_located_warning(tmp_path: Path) -> None:
    """A warning, not an error: `--set stages.rl.grpo.active_sampling=false` on a recipe that sets the rounds must
    still compile."""
    text = edit(FULL, "max_response_tokens: 64}", "max_response_tokens: 64, max_sampling_rounds: 4}")
    path, warnings = compile_warnings(tmp_path, text, about="max_sampling_rounds")
    assert warnings == [f"{display(path)}:{position(text, 'max_sampling_rounds: 4', '4}')}: warning: "
                        "stages[3].grpo.max_sampling_rounds: has no effect without active_sampling: true"]


def test_a_prompt_filter_of_one_sample_per_prompt_is_located(tmp_path: Path) -> None:
    """One sample cannot show reward variance: the filter needs two at least."""
    text = edit(FULL, "max_response_tokens: 64}", "max_response_tokens: 64, prompt_filter: {samples_per_prompt: 1}}")
    message = expect_one(tmp_path, text, "samples_per_prompt: 1", "stages[3].grpo.prompt_filter.samples_per_prompt",
                         value="1")
    assert message == "must be >= 2 (got 1)"


def test_a_prompt_filter_gets_a_cost_per_thousand_prompts(tmp_path: Path) -> None:
    text = edit(FULL, "max_response_tokens: 64}", "max_response_tokens: 64, prompt_filter: {samples_per_prompt: 8}}")
    path = tmp_path / "r.yaml"
    path.write_text(text, encoding="utf-8")
    result = run_main(["compile", path, "-o", tmp_path / "out"])
    assert result.code == 0, result.err
    jobs = compiled_jobs(tmp_path / "out")
    est = jobs["rl"]["estimates"]
    rollouts, generate = est["rollouts_per_step"], est["step_seconds"]["generate"]
    assert est["prompt_filter_seconds_per_1k_prompts"] == pytest.approx(generate * 1000 * 8 / rollouts, rel=0.01)  # generate is rounded
    assert jobs["rl"]["config"]["rl"]["grpo"]["prompt_filter"] == {"samples_per_prompt": 8}


def test_fixed_data_mix_weights_must_sum_to_one(tmp_path: Path) -> None:
    text = edit(MINIMAL, "weights: {text: 1.0}", "weights: {text: 0.7}")
    message = expect_one(tmp_path, text, "{text: 0.7}", "data.mix.weights")
    assert "sum to 0.7" in message and "must sum to 1" in message


def test_unknown_source_in_the_data_mix(tmp_path: Path) -> None:
    text = edit(MINIMAL, "weights: {text: 1.0}", "weights: {text: 0.5, txet: 0.5}")
    message = expect_one(tmp_path, text, "0.5}", "data.mix.weights.txet")
    assert "unknown source 'txet'" in message and "did you mean 'text'" in message


def test_stage_mix_weights_must_sum_to_one(tmp_path: Path) -> None:
    text = edit(MINIMAL, "    steps: 10\n", "    steps: 10\n    mix: {text: 0.25}\n")
    message = expect_one(tmp_path, text, "{text: 0.25}", "stages[0].mix")
    assert "sum to 0.25" in message


def test_unknown_source_in_a_stage_mix(tmp_path: Path) -> None:
    text = edit(MINIMAL, "    steps: 10\n", "    steps: 10\n    mix: {text: 0.5, cod: 0.5}\n")
    path, lines = compile_text(tmp_path, text)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{display(path)}:{line_of(text, 'cod:')}:{col_of(text, '0.5}')}: stages[0].mix.cod: "), lines
    assert "unknown source 'cod'" in lines[0]


def test_regmix_min_weights_summing_above_one(tmp_path: Path, tiny_full_text: str) -> None:
    text = edit(tiny_full_text, "min_weight: {text: 0.1}", "min_weight: {text: 0.6, code: 0.5}")
    message = expect_one(tmp_path, text, "{text: 0.6", "data.mix.constraints.min_weight")
    assert "sum to 1.1 > 1" in message


def test_regmix_max_epochs_infeasible(tmp_path: Path, tiny_full_text: str) -> None:
    text = edit(tiny_full_text, "max_epochs: 4", "max_epochs: 0.01")
    path, lines = compile_text(tmp_path, text)
    d = display(path)
    constraints = f"{d}:{line_of(text, 'min_weight:')}:{col_of(text, 'min_weight:')}: data.mix.constraints: "
    min_text = f"{d}:{line_of(text, 'min_weight:')}:{col_of(text, '0.1}')}: data.mix.constraints.min_weight.text: "
    assert len(lines) == 2, lines
    assert lines[0].startswith(constraints), lines  # sorted: column 7 before column 26
    assert lines[1].startswith(min_text), lines
    assert "infeasible" in lines[0] and "raise max_epochs" in lines[0]
    assert "exceeds its max" in lines[1]


def test_regmix_max_weights_summing_below_one(tmp_path: Path, tiny_full_text: str) -> None:
    max_weight = "max_weight: {arithmetic: 0.2, code: 0.2, text: 0.2, words: 0.3}"
    text = edit(tiny_full_text, "min_weight: {text: 0.1}", f"min_weight: {{text: 0.1}}\n      {max_weight}")
    message = expect_one(tmp_path, text, "min_weight:", "data.mix.constraints")
    assert "max weights allow at most 0.9 in total (< 1)" in message and "max_weight" in message


def test_regmix_min_weight_above_max_weight(tmp_path: Path, tiny_full_text: str) -> None:
    text = edit(tiny_full_text, "min_weight: {text: 0.1}", "min_weight: {text: 0.5}\n      max_weight: {text: 0.3}")
    message = expect_one(tmp_path, text, "min_weight:", "data.mix.constraints.min_weight.text", value="0.5}")
    assert message.startswith("min weight 0.5 of 'text' exceeds its max 0.3")


def test_regmix_swarm_too_small_for_its_cv_is_a_located_warning(tmp_path: Path, tiny_full_text: str) -> None:
    text = edit(tiny_full_text, "swarm_size: 24", "swarm_size: 6")
    path, warnings = compile_warnings(tmp_path, text, about="swarm_size")
    assert warnings == [f"{display(path)}:{position(text, 'swarm_size: 6', '6')}: warning: data.mix.swarm_size: 6 proxies "
                        "are too few for the fit's 4-fold CV (at least 8): mix-fit will fail after the swarm"]


def test_regmix_unknown_source_in_constraints(tmp_path: Path, tiny_full_text: str) -> None:
    text = edit(tiny_full_text, "min_weight: {text: 0.1}", "min_weight: {txt: 0.1}")
    message = expect_one(tmp_path, text, "0.1}", "data.mix.constraints.min_weight.txt")
    assert "did you mean 'text'" in message


BIG = """\
name: big
cluster: h100-80gb
model:
  family: llama3
  vocab_size: 128256
  d_model: 4096
  n_layers: 32
  n_heads: 32
  n_kv_heads: 8
  ffn_hidden: 14336
  max_seq_len: 4096
data:
  sources:
    text: {hf: org/text, tokens: 1000000000000}
  mix: {kind: fixed, weights: {text: 1.0}}
stages:
  - name: pretrain
    kind: pretrain
    lr: 1.0e-4
    global_batch_sequences: 1024
    micro_batch_size: 8
    seq_len: 4096
    steps: 100
"""


def test_memory_above_the_gpu_suggests_a_fix(tmp_path: Path) -> None:
    message = expect_one(tmp_path, BIG, "name: pretrain", "stages[0].resources")
    assert "GiB per GPU" in message
    assert "80" in message  # the H100's memory
    assert "activation_checkpointing" in message or "fsdp" in message
    # The suggested fix really fits: compiling with it succeeds.
    fixed = edit(BIG, "    steps: 100\n", "    steps: 100\n    activation_checkpointing: full\n")
    path = tmp_path / "fixed.yaml"
    path.write_text(fixed)
    assert run_main(["compile", path, "-o", tmp_path / "out2"]).code == 0


def test_unknown_cluster_profile_suggests_one(tmp_path: Path) -> None:
    text = edit(MINIMAL, "cluster: local", "cluster: h100-80g")
    message = expect_one(tmp_path, text, "h100-80g", "cluster")
    assert "did you mean 'h100-80gb'" in message
    assert "local" in message  # the known profiles are listed


def test_local_cluster_with_gpus_needs_a_gpu_type(tmp_path: Path) -> None:
    text = edit(MINIMAL, "cluster: local", "cluster: {kind: local, gpus: 2}")
    path, lines = compile_text(tmp_path, text)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{display(path)}:{line_of(text, 'cluster:')}:"), lines
    assert "gpu" in lines[0]


def test_slurm_generation_without_gpus_is_a_user_error(tmp_path: Path, tiny_full_text: str) -> None:
    """tiny-think asks for 0 GPUs for its proxies, sidecars and generation: on a Slurm cluster each is an error."""
    path, lines = compile_text(tmp_path, edit(tiny_full_text, "cluster: local", "cluster: h100-80gb"))
    assert any("rollout.gpus" in line for line in lines), lines
    assert any("delta.gpus" in line for line in lines), lines
    assert any("proxy.gpus" in line for line in lines), lines


# --- several errors ------------------------------------------------------------------------------


def test_schema_errors_are_reported_together_and_sorted(tmp_path: Path) -> None:
    text = edit(edit(edit(MINIMAL, "steps: 10", "steps: abc"), "d_model: 64", "d_model: -64"), "family: llama3", "family: gpt")
    path, lines = compile_text(tmp_path, text)
    d = display(path)
    assert lines == sorted(lines, key=lambda l: tuple(int(x) for x in l[len(d) + 1:].split(":")[:2]))
    assert [l.split(":")[1] for l in lines] == [str(line_of(text, n)) for n in ("gpt", "-64", "abc")], lines


def test_plan_errors_are_reported_together_and_sorted(tmp_path: Path) -> None:
    text = FULL
    text = edit(text, "n_kv_heads: 2", "n_kv_heads: 3")
    text = edit(text, "  - name: sft\n", "  - name: sft\n    from: pretrian\n")
    text = edit(text, "    global_batch_sequences: 8\n    micro_batch_size: 4\n    steps: 10\n  - name: dpo",
                "    global_batch_sequences: 10\n    micro_batch_size: 4\n    seq_len: 256\n    steps: 10\n  - name: dpo")
    text = edit(text, "max_response_tokens: 64", "max_response_tokens: 100")
    path, lines = compile_text(tmp_path, text)
    d = display(path)
    expected = [
        (line_of(text, "n_kv_heads: 3"), "model.n_kv_heads"),
        (line_of(text, "from: pretrian"), "stages[1].from"),
        (line_of(text, "global_batch_sequences: 10"), "stages[1].global_batch_sequences"),
        (line_of(text, "seq_len: 256"), "stages[1].seq_len"),
        (line_of(text, "max_model_len"), "stages[3].rollout.max_model_len"),
    ]
    got = [(int(l[len(d) + 1:].split(":")[0]), l.split(": ")[1]) for l in lines]
    assert got == expected, lines


def test_no_traceback_even_for_internal_errors(tmp_path: Path) -> None:
    """Nonsense CLI use is an argparse error (exit 2), never a traceback."""
    result = run_main(["compile"])
    assert result.code == 2 and "Traceback" not in result.err
    result = run_main(["frobnicate", "x.yaml"])
    assert result.code == 2 and "Traceback" not in result.err


def test_subprocess_error_has_no_traceback(tmp_path: Path, run_cli_subprocess) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(edit(MINIMAL, "steps: 10", "steps: abc"))
    result = run_cli_subprocess(["compile", path, "-o", tmp_path / "out"])
    lines = check_failed(result, tmp_path / "out")
    assert len(lines) == 1 and ":" in lines[0]


def test_failed_compile_leaves_an_existing_build_untouched(tmp_path: Path) -> None:
    good = tmp_path / "r.yaml"
    good.write_text(MINIMAL)
    out = tmp_path / "out"
    assert run_main(["compile", good, "-o", out]).code == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    good.write_text(edit(MINIMAL, "steps: 10", "steps: abc"))
    result = run_main(["compile", good, "-o", out])
    assert result.code == 2 and result.out == ""
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in out.iterdir()) == ["mini"]  # no staging folders left behind


@pytest.mark.parametrize("below", ["", "sub"], ids=["file", "below-a-file"])
def test_output_that_is_a_file_is_a_user_error(tmp_path: Path, below: str) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(MINIMAL)
    blocker = tmp_path / "out"
    blocker.write_text("not a folder")
    out = blocker / below if below else blocker
    result = run_main(["compile", recipe, "-o", out])
    assert result.code == 2 and result.out == "" and "Traceback" not in result.err, result
    [line] = result.err.splitlines()
    assert DIAGNOSTIC.match(line) and line.startswith(f"<-o {out}>:1:1: cannot write"), line
    assert blocker.read_text() == "not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "r.yaml"]  # no staging folder left behind


# --- weight sync ---------------------------------------------------------------------------------


ON_GPUS = edit(FULL, "cluster: local", "cluster: {kind: local, gpus: 2, gpu: {type: H100-80GB, memory_gib: 80, "
                                       "peak_tflops: 989, memory_bandwidth_gbps: 3350}}")


def test_nccl_weight_sync_on_a_cpu_sidecar_is_a_located_error(tmp_path: Path) -> None:
    text = edit(FULL, "rollout: {gpus: 0,", "rollout: {gpus: 0, weight_sync: nccl,")
    message = expect_one(tmp_path, text, "weight_sync: nccl", "stages[3].rollout.weight_sync", value="nccl")
    assert "the sidecar has none" in message and "use filesystem" in message


def test_nccl_weight_sync_reaches_one_engine(tmp_path: Path) -> None:
    """Two sidecar GPUs at tensor_parallel 1 are two engines; NCCL's group spans the trainer and one engine."""
    text = edit(ON_GPUS, "rollout: {gpus: 0,", "rollout: {gpus: 2, weight_sync: nccl,")
    message = expect_one(tmp_path, text, "weight_sync: nccl", "stages[3].rollout.weight_sync", value="nccl")
    assert "the sidecar has 2 (2 GPUs, tensor_parallel 1)" in message


def test_nccl_weight_sync_reaches_the_trainer_and_the_sidecar(tmp_path: Path) -> None:
    """The trainer picks its sync from `rl.weight_sync`, the sidecar starts vLLM's NCCL engine from
    `rollout.weight_sync`, and the group's size comes from `sidecar_tensor_parallel`."""
    text = edit(ON_GPUS, "rollout: {gpus: 0,", "rollout: {gpus: 2, tensor_parallel: 2, weight_sync: nccl,")
    path = tmp_path / "r.yaml"
    path.write_text(text)
    assert run_main(["compile", path, "-o", tmp_path / "out"]).code == 0
    jobs = compiled_jobs(tmp_path / "out")
    assert jobs["rl"]["config"]["rl"]["weight_sync"] == "nccl"
    assert jobs["rl"]["config"]["rl"]["sidecar_tensor_parallel"] == 2
    assert jobs["rl-rollout"]["config"]["rollout"]["weight_sync"] == "nccl"


def test_a_negative_scale_outside_zero_to_one_is_a_located_error(tmp_path: Path) -> None:
    text = edit(FULL, "max_response_tokens: 64}", "max_response_tokens: 64, negative_scale: 1.5}")
    message = expect_one(tmp_path, text, "negative_scale: 1.5", "stages[3].grpo.negative_scale", value="1.5")
    assert message == "must be <= 1.0 (got 1.5)"


def test_sidecar_gpus_on_one_node_are_data_parallel_engines(tmp_path: Path) -> None:
    """Two sidecar GPUs at tensor_parallel 1 on one node: one vLLM server (one task) with two engines, none idle."""
    text = edit(ON_GPUS, "rollout: {gpus: 0,", "rollout: {gpus: 2,")
    _, warnings = compile_warnings(tmp_path, text, about="rollout.gpus")
    assert warnings == []
    jobs = compiled_jobs(tmp_path / "out")
    assert jobs["rl-rollout"]["config"]["rollout"]["data_parallel"] == 2
    assert jobs["rl-rollout"]["resources"]["processes"] == 1


def test_engines_run_on_every_node_of_a_serving_job(tmp_path: Path) -> None:
    """The 7B recipe's serving jobs span nodes: every node runs its share of the engines (one task per node), the
    first one's API server in front of them all, and no GPU is left idle."""
    result = run_main(["compile", RECIPES / "olmo3-7b-think.yaml", "-o", tmp_path / "out"])
    assert result.code == 0, result.err
    assert "stay idle" not in result.out
    jobs = compiled_jobs(tmp_path / "out")
    engines = {job: (jobs[job]["config"][block]["data_parallel"], jobs[job]["config"][block]["data_parallel_local"],
                     jobs[job]["resources"]["nodes"], jobs[job]["resources"]["processes"])
               for job, block in (("sft-distill", "serve"), ("dpo-delta-pairs", "serve"), ("rlvr-rollout", "rollout"))}
    assert engines == {"sft-distill": (16, 2, 8, 8), "dpo-delta-pairs": (8, 2, 4, 4), "rlvr-rollout": (56, 8, 7, 7)}


def test_gpus_no_engine_can_use_are_a_located_warning(tmp_path: Path) -> None:
    """12 sidecar GPUs on 2 nodes at tensor_parallel 4: one engine per node, two GPUs of each idle."""
    sets = ["stages.rlvr.rollout.nodes=2", "stages.rlvr.rollout.gpus=12", "stages.rlvr.rollout.tensor_parallel=4"]
    result = run_main(["compile", RECIPES / "olmo3-7b-think.yaml", "-o", tmp_path / "out",
                       *[arg for s in sets for arg in ("--set", s)]])
    assert result.code == 0, result.err
    assert [line for line in result.out.splitlines() if "stay idle" in line] == [
        "<--set stages.rlvr.rollout.gpus=12>:1:26: warning: stages[5].rollout.gpus: the sidecar starts 1 vLLM "
        "engine(s) of 4 GPU(s) on each of its 2 node(s): 2 of each node's 6 GPUs stay idle"]
    rollout = compiled_jobs(tmp_path / "out")["rlvr-rollout"]["config"]["rollout"]
    assert (rollout["data_parallel"], rollout["data_parallel_local"]) == (2, 1)


