"""Assemble a recipe's located tree: read the file, follow `extends`, expand cluster profiles, apply --set.

Merging rules: mappings merge key by key (the extending file wins; `null` clears), lists are
replaced, except `stages`, which merge by stage `name` so a variant can change one stage. A mapping
that changes its `kind` (a RegMix search becoming a fixed mix, a cosine schedule becoming wsd) replaces
the base's: a different type has different fields.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from compiler.diagnostics import Diagnostic, Loc, RecipeError, did_you_mean, format_path
from compiler.located import LocatedList, LocatedMap
from compiler.schema_walk import accepts_none, annotation_at, is_text
from compiler.yaml_load import parse_yaml

PROFILE_DIR = Path(__file__).resolve().parent.parent / "spec" / "clusters"


def read_tree(path: Path, display: str) -> LocatedMap:
    """Parse one file; its top level must be a mapping."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError([Diagnostic(Loc(display, 1, 1), "", f"cannot read file: {exc.__class__.__name__}: {exc}")]) from None
    tree = parse_yaml(text, display)
    if not isinstance(tree, LocatedMap):
        got = "an empty document" if tree is None else f"a {type(tree).__name__.replace('Located', '').lower()}"
        raise RecipeError([Diagnostic(getattr(tree, "loc", Loc(display, 1, 1)), "", f"the top level must be a mapping of recipe fields, got {got}")])
    return tree


def _display(path: Path) -> str:
    """A path as the user would type it: relative to the working directory when below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def merge(base: Any, over: Any, *, top: bool = False) -> Any:
    """Deep-merge `over` onto `base` (neither is modified)."""
    if not (isinstance(base, LocatedMap) and isinstance(over, LocatedMap)):
        return copy.deepcopy(over)
    if "kind" in base and "kind" in over and base["kind"] != over["kind"]:
        return copy.deepcopy(over)
    out = copy.deepcopy(base)
    for key, value in over.items():
        if key in out and isinstance(out[key], LocatedMap) and isinstance(value, LocatedMap):
            merged = merge(out[key], value)
        elif top and key == "stages" and isinstance(out.get(key), LocatedList) and isinstance(value, LocatedList):
            merged = _merge_stages(out[key], value)
        else:
            merged = copy.deepcopy(value)
        out.put(key, merged, over.key_locs[key], over.value_locs[key])
    return out


def _merge_stages(base: LocatedList, over: LocatedList) -> LocatedList:
    out = copy.deepcopy(base)
    index = {s.get("name"): i for i, s in enumerate(out) if isinstance(s, dict)}
    for stage, loc in zip(over, over.item_locs):
        name = stage.get("name") if isinstance(stage, dict) else None
        if name in index:
            out[index[name]] = merge(out[index[name]], stage)
            out.item_locs[index[name]] = loc
        else:
            out.push(copy.deepcopy(stage), loc)
    return out


def load_with_extends(path: Path, chain: tuple[Path, ...] = (), *, origin: Path | None = None) -> LocatedMap:
    """`origin`: where the file at `path` stands in the user's tree (a git blob extracted to a temporary
    file still resolves `extends` against its place in the repository, and errors name that place)."""
    path = path.resolve()
    where = (origin or path).resolve()
    tree = read_tree(path, _display(where))
    extends = tree.get("extends")
    if extends is None:
        return tree
    loc = tree.value_locs["extends"]
    if not isinstance(extends, str):
        raise RecipeError([Diagnostic(loc, "extends", f"must be a path to a recipe file (got {extends!r})")])
    base_path = (where.parent / extends).resolve()
    if base_path == where or base_path in chain:
        cycle = " -> ".join(_display(p) for p in (*chain, where, base_path))
        raise RecipeError([Diagnostic(loc, "extends", f"cyclic extends: {cycle}")])
    if not base_path.is_file():
        raise RecipeError([Diagnostic(loc, "extends", f"base recipe not found: {_display(base_path)}")])
    return merge(load_with_extends(base_path, (*chain, where)), tree, top=True)


def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def _expand_cluster(tree: LocatedMap, recipe_dir: Path) -> None:
    """`cluster: NAME`, `cluster: FILE.yaml` or `cluster: {profile: NAME, ...overrides}`."""
    value = tree.get("cluster")
    overrides = None
    if isinstance(value, LocatedMap) and "profile" in value:
        overrides, value = value, value["profile"]
        loc = overrides.value_locs["profile"]
    elif isinstance(value, str):
        loc = tree.value_locs["cluster"]
    else:
        return
    if not isinstance(value, str):
        raise RecipeError([Diagnostic(loc, "cluster.profile", f"must be a profile name (got {value!r})")])
    if value.endswith((".yaml", ".yml")):
        profile_path = recipe_dir / value
    else:
        profile_path = PROFILE_DIR / f"{value}.yaml"
    if not profile_path.is_file():
        hint = did_you_mean(value, profile_names())
        raise RecipeError([Diagnostic(loc, "cluster", f"unknown cluster profile '{value}'{hint}; known: {', '.join(profile_names())}")])
    profile = read_tree(profile_path, _display(profile_path))
    if overrides is not None:
        rest = copy.deepcopy(overrides)
        del rest["profile"], rest.key_locs["profile"], rest.value_locs["profile"]
        profile = merge(profile, rest)
    tree.put("cluster", profile, tree.key_locs["cluster"], tree.value_locs["cluster"])


def _set_target(tree: LocatedMap, parts: list[str], where: Loc, text: str) -> tuple[Any, list[str | int]]:
    """Walk to the parent of the last part, creating mappings as needed; stages go by name or index."""
    node: Any = tree
    resolved: list[str | int] = []
    for i, part in enumerate(parts[:-1]):
        key: str | int = part
        if isinstance(node, list):
            names = [s.get("name") for s in node if isinstance(s, dict)]
            if part.isdigit() and int(part) < len(node):
                key = int(part)
            elif part in names:
                key = names.index(part)
            else:
                raise RecipeError([Diagnostic(where, format_path(resolved), f"no item '{part}' in --set {text}{did_you_mean(part, names)}")])
        elif isinstance(node, dict):
            if node.get(part) is None:
                node.put(part, LocatedMap(where), where, where)
        else:
            raise RecipeError([Diagnostic(where, format_path(resolved), f"--set {text}: {format_path(resolved)} is not a mapping")])
        node = node[key]
        resolved.append(key)
    return node, resolved


def apply_set(tree: LocatedMap, assignment: str, root_model: Any) -> None:
    """Apply one `path=value` override, typing the value by the schema."""
    where = Loc(f"<--set {assignment}>", 1, 1)
    path, eq, raw = assignment.partition("=")
    parts = [p for p in path.strip().split(".")]
    if not eq or not all(parts):
        raise RecipeError([Diagnostic(where, "", "expected --set path.to.field=value")])
    where = Loc(where.file, 1, len(path) + 2)
    parent, resolved = _set_target(tree, parts, where, assignment)
    last = parts[-1]
    key: str | int = int(last) if isinstance(parent, list) and last.isdigit() else last
    annotation = annotation_at(root_model, [*resolved, key], tree)
    value: Any
    if is_text(annotation) and raw not in ("null", "~"):
        value = raw
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # bytes that are not UTF-8 on the command line
            raise RecipeError([Diagnostic(where, format_path([*resolved, key]), f"the value {raw!r} is not valid UTF-8 text")]) from None
    else:
        value = parse_yaml(raw, where.file) if raw.strip() else None
    if value is None and isinstance(parent, LocatedMap) and not accepts_none(root_model, [*resolved, key], tree):
        # null on a field that cannot be null restores its default: drop the key
        if last in parent:
            del parent[last], parent.key_locs[last], parent.value_locs[last]
        return
    if isinstance(parent, LocatedMap):
        parent.put(last, value, where, where)
    elif isinstance(parent, LocatedList) and isinstance(key, int) and key < len(parent):
        parent[key] = value
        parent.item_locs[key] = where
    else:
        raise RecipeError([Diagnostic(where, format_path(resolved), f"--set {assignment}: cannot set '{last}' here")])


def compose(path: Path, sets: list[str] = (), *, root_model: Any = None, origin: Path | None = None) -> LocatedMap:
    """The final located tree of a recipe file (see `load_with_extends` for `origin`)."""
    recipe_dir = (origin or path).resolve().parent
    tree = load_with_extends(path, origin=origin)
    _expand_cluster(tree, recipe_dir)
    for assignment in sets:
        apply_set(tree, assignment, root_model)
    if "cluster" in tree and any(a.split("=", 1)[0].startswith("cluster") for a in sets):
        _expand_cluster(tree, recipe_dir)
    return tree
