"""YAML data that remembers where each value came from.

`LocatedMap` and `LocatedList` are plain dict/list subclasses carrying the source
location of themselves, their keys and their items, so merged trees (extends, --set)
still point at the file and line that set each value.
"""
from __future__ import annotations

from typing import Any, Sequence

from compiler.diagnostics import Loc


class LocatedMap(dict):
    def __init__(self, loc: Loc):
        super().__init__()
        self.loc = loc
        self.key_locs: dict[str, Loc] = {}
        self.value_locs: dict[str, Loc] = {}

    def put(self, key: str, value: Any, key_loc: Loc, value_loc: Loc) -> None:
        self[key] = value
        self.key_locs[key] = key_loc
        self.value_locs[key] = value_loc


class LocatedList(list):
    def __init__(self, loc: Loc):
        super().__init__()
        self.loc = loc
        self.item_locs: list[Loc] = []

    def push(self, value: Any, loc: Loc) -> None:
        self.append(value)
        self.item_locs.append(loc)


def to_plain(value: Any) -> Any:
    """Strip locations: nested plain dicts and lists, for validation and hashing."""
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_plain(v) for v in value]
    return value


def locate(tree: Any, parts: Sequence[str | int], *, key: bool = False) -> tuple[Loc | None, list[str | int]]:
    """Closest location for a path, and the path with parts that do not exist in the tree dropped.

    Parts that are not in the tree (pydantic's union tags such as 'dpo', or '[key]') are skipped,
    so a validation error's `loc` maps back to what the user wrote. With `key=True` the location
    of a mapping key is preferred over its value's (for unknown-key errors).
    """
    node, best = tree, getattr(tree, "loc", None)
    kept: list[str | int] = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, LocatedMap) and isinstance(part, str) and part in node:
            best = node.key_locs[part] if (key and last) else node.value_locs[part]
            node = node[part]
        elif isinstance(node, LocatedList) and isinstance(part, int) and 0 <= part < len(node):
            best = node.item_locs[part]
            node = node[part]
        elif isinstance(part, str) and ("[" in part or (isinstance(node, dict) and part == node.get("kind"))):
            continue
        else:
            kept.extend(parts[i:])
            break
        kept.append(part)
    return best, kept
