"""Validate a located tree against the recipe schema; turn pydantic errors into located one-liners."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from compiler.diagnostics import Diagnostic, RecipeError, did_you_mean, format_path
from compiler.located import LocatedMap, locate, to_plain
from compiler.schema_walk import annotation_at, field_names
from spec.base import IDENTIFIER_PATTERN
from spec.recipe import Recipe

_COMPARISONS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _message(error: dict[str, Any], tree: Any, parts: list[str | int]) -> str:
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    if kind in _COMPARISONS:
        bound = next(iter(ctx.values()))
        return f"must be {_COMPARISONS[kind]} {bound} (got {_show(value)})"
    if kind == "extra_forbidden":
        model = annotation_at(Recipe, parts[:-1], tree)
        names = field_names(model) if isinstance(model, type) and issubclass(model, BaseModel) else []
        return f"unknown key '{parts[-1]}'{did_you_mean(str(parts[-1]), names)}"
    if kind == "missing":
        return "required field is missing"
    if kind == "literal_error":
        expected = ctx.get("expected", "")
        choices = [c.strip().strip("'") for c in expected.replace(" or ", ",").split(",")]
        return f"must be one of {expected} (got {_show(value)}){did_you_mean(str(value), choices)}"
    if kind == "union_tag_invalid":
        tags = [t.strip().strip("'") for t in ctx.get("expected_tags", "").split(",")]
        return f"unknown kind {_show(ctx.get('tag'))}; expected one of {', '.join(tags)}{did_you_mean(str(ctx.get('tag')), tags)}"
    if kind == "union_tag_not_found":
        return f"missing '{ctx.get('discriminator', 'kind').strip(chr(39))}' (the type tag)"
    if kind == "string_pattern_mismatch" and ctx.get("pattern") == IDENTIFIER_PATTERN:
        return f"must be a lowercase identifier: a letter, then letters, digits, '-' or '_' (got {_show(value)})"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    msg = error["msg"][0].lower() + error["msg"][1:]
    if isinstance(value, (dict, list)):
        return msg
    return f"{msg} (got {_show(value)})"


def diagnostics_from(exc: ValidationError, tree: LocatedMap) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    for error in exc.errors():
        raw_parts = list(error["loc"])
        loc, parts = locate(tree, raw_parts, key=error["type"] == "extra_forbidden")
        if error["type"] == "union_tag_invalid":
            kind_loc, _ = locate(tree, [*parts, "kind"])
            loc, parts = kind_loc, [*parts, "kind"]
        out.append(Diagnostic(loc or tree.loc, format_path(parts), _message(error, tree, parts)))
    return sorted(set(out), key=lambda d: (d.loc.file, d.loc.line, d.loc.col, d.path))


def validate(tree: LocatedMap) -> Recipe:
    try:
        return Recipe.model_validate(to_plain(tree))
    except ValidationError as exc:
        raise RecipeError(diagnostics_from(exc, tree)) from None
