"""The recipe JSON Schema: valid, described everywhere, closed to unknown keys; shipped recipes point editors at it."""
from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
from pathlib import Path
from typing import Any, Iterator

import pytest
from pydantic import BaseModel

import spec
from conftest import RECIPES, run_main

SHIPPED = sorted(RECIPES.glob("*.yaml"))


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    result = run_main(["schema"])
    assert result.code == 0 and result.err == ""
    return json.loads(result.out)


def walk(node: Any, path: str = "$") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every JSON object in the schema, with its JSON path."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{path}[{i}]")


def spec_models() -> list[type[BaseModel]]:
    found: dict[str, type[BaseModel]] = {}
    for info in pkgutil.iter_modules(spec.__path__, "spec."):
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseModel) and obj.__module__.startswith("spec."):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return [found[k] for k in sorted(found)]


def test_schema_is_json_with_a_dialect(schema: dict[str, Any]) -> None:
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert schema["type"] == "object"
    assert {"name", "cluster", "model", "data", "stages"} <= set(schema["required"])
    assert schema["$defs"], "the models are in $defs"


def test_every_ref_resolves(schema: dict[str, Any]) -> None:
    refs = [node["$ref"] for _, node in walk(schema) if isinstance(node.get("$ref"), str)]
    assert refs
    for ref in refs:
        assert ref.startswith("#/$defs/") and ref.removeprefix("#/$defs/") in schema["$defs"], ref


def test_every_model_property_has_a_description(schema: dict[str, Any]) -> None:
    missing = []
    checked = 0
    for path, node in walk(schema):
        properties = node.get("properties")
        if not isinstance(properties, dict) or path.endswith(".properties"):
            continue
        for name, prop in properties.items():
            checked += 1
            if not (isinstance(prop, dict) and str(prop.get("description", "")).strip()):
                missing.append(f"{path}.properties.{name}")
    assert checked > 100
    assert missing == [], missing


def test_every_model_has_a_description(schema: dict[str, Any]) -> None:
    missing = [name for name, model in schema["$defs"].items() if not str(model.get("description", "")).strip()]
    assert missing == []


def test_every_object_forbids_extra_keys(schema: dict[str, Any]) -> None:
    assert schema["additionalProperties"] is False
    open_models = [name for name, model in schema["$defs"].items()
                   if model.get("type") == "object" and model.get("additionalProperties") is not False]
    assert open_models == []
    assert all(model.get("type") == "object" for model in schema["$defs"].values())


def test_every_spec_model_forbids_extra_keys() -> None:
    models = spec_models()
    assert len(models) > 20
    loose = [m.__qualname__ for m in models if m.model_config.get("extra") != "forbid"]
    assert loose == []


def test_every_spec_field_has_a_description() -> None:
    missing = [f"{m.__qualname__}.{name}" for m in spec_models() for name, field in m.model_fields.items()
               if not (field.description or "").strip()]
    assert missing == []


@pytest.mark.parametrize("recipe", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_recipes_point_editors_at_the_schema(recipe: Path) -> None:
    first = recipe.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# yaml-language-server: $schema="), first
    target = (recipe.parent / first.split("$schema=", 1)[1].strip()).resolve()
    assert target.is_file(), f"{recipe.name} points at {target}, which does not exist"
    assert json.loads(target.read_text())["$schema"].startswith("https://json-schema.org/")


def test_there_are_shipped_recipes() -> None:
    assert SHIPPED
