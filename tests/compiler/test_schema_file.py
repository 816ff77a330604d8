"""The committed schema (what editors read) is exactly what `recipe schema` prints."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from compiler.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_committed_schema_is_current(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    committed = json.loads((ROOT / "schema" / "recipe.schema.json").read_text())
    assert printed == committed, "schema/recipe.schema.json is stale: recipe schema > schema/recipe.schema.json"
