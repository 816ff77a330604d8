"""Parse YAML into located trees, with YAML 1.2-style scalars and errors instead of surprises.

PyYAML follows YAML 1.1: `1e-4` is a string, `on` is a boolean, `48:00:00` is a base-60
integer and `010` is octal. Recipes get the YAML 1.2 core rules instead (plus `_` digit
separators), duplicate keys are errors, and every node keeps its line and column.
"""
from __future__ import annotations

import math
import re
from typing import Any

import yaml

from compiler.diagnostics import Diagnostic, Loc, RecipeError
from compiler.located import LocatedList, LocatedMap


class _RecipeLoader(yaml.SafeLoader):
    """SafeLoader with the YAML 1.2 core schema's implicit types."""


_RecipeLoader.yaml_implicit_resolvers = {}
_IMPLICIT = [
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", list("~nN") + [""]),
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", list("tTfF")),
    ("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9][0-9_]*|0x[0-9a-fA-F_]+|0o[0-7_]+)$", list("-+0123456789")),
    (
        "tag:yaml.org,2002:float",
        r"^(?:[-+]?(?:\.[0-9_]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        list("-+.0123456789"),
    ),
]
for _tag, _pattern, _first in _IMPLICIT:
    _RecipeLoader.add_implicit_resolver(_tag, re.compile(_pattern), _first)


MAX_INT = 2**63 - 1  # larger integers are never meaningful in a recipe and overflow float arithmetic


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = node.value.replace("_", "")
    # YAML 1.2: leading zeros are decimal, not octal
    value = int(text, 10) if re.fullmatch(r"[-+]?0[0-9]+", text) else int(text, 0)
    if abs(value) > MAX_INT:
        raise ValueError(f"integer out of range (at most {MAX_INT:,} in magnitude)")
    return value


def _construct_float(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> float:
    text = node.value.replace("_", "").lower()
    if text.endswith(".inf"):
        return -math.inf if text.startswith("-") else math.inf
    if text == ".nan":
        return math.nan
    return float(text)


_RecipeLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_RecipeLoader.add_constructor("tag:yaml.org,2002:float", _construct_float)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


MAX_NODES = 200_000  # far above any real recipe; stops alias bombs


def _loc(file: str, node: yaml.Node) -> Loc:
    return Loc(file, node.start_mark.line + 1, node.start_mark.column + 1)


class _TreeBuilder:
    def __init__(self, loader: _RecipeLoader, file: str):
        self.loader, self.file = loader, file
        self.errors: list[Diagnostic] = []
        self.open: set[int] = set()  # mapping/sequence nodes being built (alias cycles)
        self.built = 0

    def build(self, node: yaml.Node, path: str) -> Any:
        self.built += 1
        if self.built > MAX_NODES:
            raise RecipeError([Diagnostic(_loc(self.file, node), path, f"more than {MAX_NODES:,} values (aliases expanding?)")])
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
            if id(node) in self.open:
                raise RecipeError([Diagnostic(_loc(self.file, node), path, "an alias refers to a node that contains it")])
            self.open.add(id(node))
            try:
                return self._mapping(node, path) if isinstance(node, yaml.MappingNode) else self._sequence(node, path)
            finally:
                self.open.discard(id(node))
        try:
            value = self.loader.construct_object(node)
            if isinstance(value, str):
                value.encode("utf-8")  # a "\ud800" escape gives a lone surrogate, which no output file can hold
            return value
        except (yaml.YAMLError, ValueError) as exc:
            self.errors.append(Diagnostic(_loc(self.file, node), path, f"bad scalar {node.value[:40]!r}{'...' if len(node.value) > 40 else ''}: {exc}"))
            return None

    def _sequence(self, node: yaml.SequenceNode, path: str) -> LocatedList:
        seq = LocatedList(_loc(self.file, node))
        for i, item in enumerate(node.value):
            seq.push(self.build(item, f"{path}[{i}]"), _loc(self.file, item))
        return seq

    def _mapping(self, node: yaml.MappingNode, path: str) -> LocatedMap:
        mapping = LocatedMap(_loc(self.file, node))
        merges: list[yaml.Node] = []
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == "<<" and key_node.style is None:
                merges.extend(value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node])
                continue
            key_loc = _loc(self.file, key_node)
            if not isinstance(key_node, yaml.ScalarNode):
                self.errors.append(Diagnostic(key_loc, path, "mapping keys must be plain scalars"))
                continue
            key = str(key_node.value)
            if not key.isascii() and not _encodable(key):
                self.errors.append(Diagnostic(key_loc, path, f"bad key {key!r}: a lone surrogate is not text"))
                continue
            child = f"{path}.{key}" if path else key
            if key in mapping:
                first = mapping.key_locs[key]
                self.errors.append(Diagnostic(key_loc, child, f"duplicate key '{key}' (first set at line {first.line})"))
                continue
            mapping.put(key, self.build(value_node, child), key_loc, _loc(self.file, value_node))
        for merge_node in merges:  # YAML merge keys (`<<: *defaults`): explicit keys win, earlier merges win
            merged = self.build(merge_node, path)
            if not isinstance(merged, LocatedMap):
                self.errors.append(Diagnostic(_loc(self.file, merge_node), path, "'<<' must merge a mapping or a list of mappings"))
                continue
            for key, value in merged.items():
                if key not in mapping:
                    mapping.put(key, value, merged.key_locs[key], merged.value_locs[key])
        return mapping


def _reader_error(exc: yaml.reader.ReaderError, text: str, file: str) -> Diagnostic:
    """A character YAML does not allow (control characters), located by its position in the text."""
    position = min(max(exc.position, 0), len(text))
    line = text.count("\n", 0, position) + 1
    col = position - (text.rfind("\n", 0, position) + 1) + 1
    return Diagnostic(Loc(file, line, col), "", f"YAML error: character {chr(exc.character)!r} is not allowed: {exc.reason}")


def parse_yaml(text: str, file: str) -> Any:
    """Parse one YAML document into a located tree; raise RecipeError on any problem."""
    try:
        loader = _RecipeLoader(text)  # the reader rejects control characters here or while scanning
    except yaml.reader.ReaderError as exc:
        raise RecipeError([_reader_error(exc, text, file)]) from None
    try:
        node = loader.get_single_node()
    except yaml.reader.ReaderError as exc:
        raise RecipeError([_reader_error(exc, text, file)]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = Loc(file, mark.line + 1, mark.column + 1) if mark else Loc(file, 1, 1)
        problem = " ".join(filter(None, [exc.context, exc.problem])) or "invalid YAML"
        raise RecipeError([Diagnostic(loc, "", f"YAML syntax error: {problem}")]) from None
    except yaml.YAMLError as exc:
        raise RecipeError([Diagnostic(Loc(file, 1, 1), "", f"YAML error: {' '.join(str(exc).split())}")]) from None
    finally:
        loader.dispose()
    if node is None:
        return None
    builder = _TreeBuilder(_RecipeLoader(""), file)
    tree = builder.build(node, "")
    if builder.errors:
        raise RecipeError(builder.errors)
    return tree
