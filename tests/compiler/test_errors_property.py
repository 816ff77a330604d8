"""Property: whatever a recipe file (or a --set) holds, `recipe compile` either succeeds (exit 0, a plan written)
or reports located one-line errors (exit 2, nothing written); never a traceback or an internal error."""
from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import DIAGNOSTIC, MINIMAL_DICT, TINY, CliResult, run_main

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Values of the wrong type for (almost) any field, and some right-looking ones that are out of range.
WRONG = st.one_of(
    st.text(max_size=20),
    st.lists(st.integers(min_value=-5, max_value=5), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(min_value=-5, max_value=5), max_size=2),
    st.integers(max_value=-1, min_value=-(10**6)),
    st.floats(max_value=-1e-9, allow_nan=False, min_value=-1e6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=0, max_value=10**6),
    st.booleans(),
    st.none(),
)


def paths(tree: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value in a nested dict/list tree (not the root)."""
    out = []
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, list):
        items = enumerate(tree)
    else:
        return out
    for key, value in items:
        out.append((*prefix, key))
        out += paths(value, (*prefix, key))
    return out


def parent_of(tree: Any, path: tuple) -> Any:
    for part in path[:-1]:
        tree = tree[part]
    return tree


def check(result: CliResult, out: Path) -> None:
    assert "Traceback" not in result.err + result.out
    assert result.code in (0, 2), (result.code, result.err)
    if result.code == 2:
        assert result.out == ""
        lines = result.err.splitlines()
        assert lines, "exit 2 without a reason"
        for line in lines:
            assert DIAGNOSTIC.match(line), repr(line)
        assert not out.exists(), "a failed compile wrote its output folder"
    else:
        assert result.err == ""
        plans = list(out.glob("*/plan.json"))
        assert len(plans) == 1, list(out.rglob("*"))


def compile_bytes(data: bytes, *sets: str) -> tuple[CliResult, Path]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "recipe.yaml"
        path.write_bytes(data)
        out = Path(tmp) / "out"
        args: list[object] = ["compile", path, "-o", out]
        args += [f"--set={s}" for s in sets]  # `--set=...`: a value starting with '-' is not an option
        result = run_main(args)
        check(result, out)
        return result, out


def dump(tree: Any) -> bytes:
    return yaml.safe_dump(tree, allow_unicode=True, sort_keys=False).encode("utf-8", "surrogatepass")


@st.composite
def mutated(draw: st.DrawFn) -> Any:
    """The minimal valid recipe with one to three mutations."""
    tree = copy.deepcopy(MINIMAL_DICT)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        candidates = paths(tree)
        if not candidates:
            break
        path = draw(st.sampled_from(candidates))
        parent = parent_of(tree, path)
        action = draw(st.sampled_from(["delete", "insert", "replace", "unicode"]))
        if action == "delete":
            del parent[path[-1]]
        elif action == "insert":
            target = parent[path[-1]]
            if isinstance(target, dict):
                target[draw(st.text(min_size=1, max_size=12))] = draw(WRONG)
            elif isinstance(target, list):
                target.append(draw(WRONG))
            else:
                parent[path[-1]] = draw(WRONG)
        elif action == "replace":
            parent[path[-1]] = draw(WRONG)
        else:
            parent[path[-1]] = draw(st.text(st.characters(), min_size=0, max_size=30))
    return tree


def test_the_unmutated_recipe_compiles() -> None:
    result, _ = compile_bytes(dump(MINIMAL_DICT))
    assert result.code == 0


@SETTINGS
@given(mutated())
def test_mutated_recipes_fail_cleanly(tree: Any) -> None:
    compile_bytes(dump(tree))


@SETTINGS
@given(st.text(st.characters(), max_size=200))
def test_garbage_text_fails_cleanly(text: str) -> None:
    compile_bytes(text.encode("utf-8", "surrogatepass"))  # lone surrogates make invalid UTF-8


YAMLISH = st.lists(
    st.sampled_from(["name:", " mini", "\n", "  ", "- ", "[", "]", "{", "}", ",", ":", "&a ", "*a", "<<: ", "!!str ",
                     "!!python/object:os.system ", "'", '"', "#", "\t", "? ", "---\n", "...\n", "stages:", "kind: pretrain",
                     "cluster: local", "model:", "1e-4", ".inf", "~", "%YAML 1.2\n", "|\n", ">\n", "\\", "\x00", "\ufeff"]),
    max_size=40,
).map("".join)


@SETTINGS
@given(YAMLISH)
def test_yaml_like_garbage_fails_cleanly(text: str) -> None:
    compile_bytes(text.encode("utf-8"))


@SETTINGS
@given(st.binary(max_size=200))
def test_arbitrary_bytes_fail_cleanly(data: bytes) -> None:
    compile_bytes(data)


SET_PATHS = st.one_of(
    st.sampled_from([
        "name", "description", "cluster", "cluster.profile", "cluster.gpus", "model", "model.n_heads", "model.n_kv_heads",
        "model.sliding_window", "model.rope_scaling", "data.mix", "data.mix.weights.text", "data.sources.text.tokens",
        "stages", "stages.pretrain", "stages.pretrain.lr", "stages.0.steps", "stages.0.tokens", "stages.0.kind",
        "stages.0.resources.time_limit", "stages.0.parallelism.tp", "stages.1.lr", "stages.nope.lr", "extends",
    ]),
    st.text(max_size=20),
)
SET_VALUES = st.one_of(
    st.sampled_from(["null", "~", "", "1", "-1", "0", "2e-5", ".inf", ".nan", "[1, 2]", "{a: 1}", "{", "]", "true",
                     "local", "h100-80gb", "{kind: local, gpus: 2}", "{profile: h100-80gb, account: a}", "'x'", "&a [*a]"]),
    st.text(max_size=20),
)


@SETTINGS
@given(st.lists(st.tuples(SET_PATHS, SET_VALUES), min_size=1, max_size=3), st.booleans())
def test_random_set_assignments_never_crash(assignments: list[tuple[str, str]], tiny: bool) -> None:
    data = TINY.read_bytes() if tiny else dump(MINIMAL_DICT)
    compile_bytes(data, *[f"{path}={value}" for path, value in assignments])


@SETTINGS
@given(st.text(max_size=30).filter(lambda a: a != "--"))  # `--set=--`: Python 3.11's argparse appends [] (stdlib bug)
def test_set_without_equals_or_with_garbage_never_crashes(assignment: str) -> None:
    compile_bytes(dump(MINIMAL_DICT), assignment)
