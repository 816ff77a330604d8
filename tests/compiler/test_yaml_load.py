"""YAML loading: YAML 1.2 scalars, locations, merge keys, and errors instead of surprises."""
from __future__ import annotations

import pytest

from compiler.diagnostics import Loc, RecipeError
from compiler.yaml_load import parse_yaml


def test_scalars_follow_yaml_1_2() -> None:
    tree = parse_yaml("lr: 1e-4\nflag: on\ntime: 48:00:00\nlead: 010\nbig: 100_000\nhex: 0x10\nt: true\nn: ~\n", "r.yaml")
    assert tree == {"lr": 1e-4, "flag": "on", "time": "48:00:00", "lead": 10, "big": 100000, "hex": 16, "t": True, "n": None}
    assert isinstance(tree["lr"], float)


def test_every_value_keeps_its_location() -> None:
    tree = parse_yaml("a:\n  b: [1, 2]\n  c: x\n", "r.yaml")
    assert tree.value_locs["a"] == Loc("r.yaml", 2, 3)
    assert tree["a"].key_locs["c"] == Loc("r.yaml", 3, 3)
    assert tree["a"]["b"].item_locs[1] == Loc("r.yaml", 2, 10)


def test_merge_keys_let_explicit_keys_win() -> None:
    tree = parse_yaml("base: &b {lr: 1.0, steps: 2}\nstage:\n  <<: *b\n  steps: 5\n", "r.yaml")
    assert tree["stage"] == {"steps": 5, "lr": 1.0}
    assert tree["stage"].value_locs["lr"] == Loc("r.yaml", 1, 15)  # where the merged value was written


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: 1\na: 2\n", "r.yaml:2:1: a: duplicate key 'a' (first set at line 1)"),
        ("a: [1\n", "r.yaml:2:1: YAML syntax error"),
        ("a: &x [*x]\n", "r.yaml:1:4: a[0]: an alias refers to a node that contains it"),
        ("<<: 3\n", "r.yaml:1:5: '<<' must merge a mapping or a list of mappings"),
        ("? [a]\n: 1\n", "r.yaml:1:3: mapping keys must be plain scalars"),
        ("a: 1\n---\nb: 2\n", "r.yaml:2:1: YAML syntax error"),
    ],
)
def test_bad_yaml_is_one_located_line(text: str, expected: str) -> None:
    with pytest.raises(RecipeError) as info:
        parse_yaml(text, "r.yaml")
    lines = str(info.value).splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), lines


def test_alias_bombs_stop_early() -> None:
    rows = ["a0: &a0 [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"]
    rows += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 7)]
    with pytest.raises(RecipeError, match="more than 200,000 values"):
        parse_yaml("\n".join(rows) + "\n", "r.yaml")
