"""The compile pipeline: recipe file (+ --set) -> located tree -> Recipe -> plan."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compiler.compose import compose
from compiler.located import LocatedMap
from compiler.plan import build_plan
from compiler.validate import validate
from spec.recipe import Recipe


@dataclass(frozen=True)
class Compiled:
    path: Path
    tree: LocatedMap
    recipe: Recipe
    plan: dict[str, Any]


def compile_recipe(path: str | Path, sets: list[str] | tuple[str, ...] = (), *, origin: str | Path | None = None) -> Compiled:
    """Compile a recipe file; raises RecipeError listing every error found.

    `origin`: the file's place in the user's tree when `path` is a temporary copy (git blobs)."""
    path = Path(path)
    tree = compose(path, list(sets), root_model=Recipe, origin=Path(origin) if origin else None)
    recipe = validate(tree)
    return Compiled(path, tree, recipe, build_plan(recipe, tree))
