"""The recipe JSON Schema, for editors (yaml-language-server) and `recipe schema`."""
from __future__ import annotations

from typing import Any

from spec.recipe import Recipe

SCHEMA_ID = "https://recipe.invalid/schema/recipe.schema.json"


def recipe_schema() -> dict[str, Any]:
    schema = Recipe.model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "recipe"
    # `cluster` also takes a profile name or {profile: NAME, ...overrides}; the compiler expands it.
    cluster = schema["properties"]["cluster"]
    schema["properties"]["cluster"] = {
        "description": cluster.get("description", ""),
        "anyOf": [
            {"type": "string", "description": "A shipped profile (local, h100-80gb) or a profile file (*.yaml)."},
            {"type": "object", "required": ["profile"], "properties": {"profile": {"type": "string", "description": "The profile to start from (a name or *.yaml file)."}},
             "description": "A profile with overrides."},
            {k: v for k, v in cluster.items() if k != "description"},
        ],
    }
    return schema
