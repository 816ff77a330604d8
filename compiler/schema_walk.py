"""Walk the recipe's pydantic schema along a path: which model or type lives at `stages[2].grpo`?

Used to type `--set` values and to suggest field names for unknown keys.
"""
from __future__ import annotations

import types
from typing import Annotated, Any, Literal, Sequence, Union, get_args, get_origin

from pydantic import BaseModel


def _strip(annotation: Any) -> Any:
    """Remove Annotated and Optional wrappers."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            members = [a for a in get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation


def _union_members(annotation: Any) -> list[Any]:
    if get_origin(annotation) in (Union, types.UnionType):
        return [_strip(a) for a in get_args(annotation) if a is not type(None)]
    return [annotation]


def _pick_model(annotation: Any, data: Any) -> Any:
    """For a union of models tagged by `kind`, the member the data's kind selects."""
    members = _union_members(annotation)
    models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
    if len(models) <= 1:
        return models[0] if models else annotation
    kind = data.get("kind") if isinstance(data, dict) else None
    for model in models:
        field = model.model_fields.get("kind")
        if field is not None and kind in get_args(_strip(field.annotation)):
            return model
    return None


def field_of(model: type[BaseModel], key: str) -> Any:
    """The annotation of a field given by name or alias, or None."""
    for name, field in model.model_fields.items():
        if key in (name, field.alias):
            return field.annotation
    return None


def field_names(model: type[BaseModel]) -> list[str]:
    return [field.alias or name for name, field in model.model_fields.items()]


def annotation_at(root: type[BaseModel], parts: Sequence[str | int], tree: Any) -> Any:
    """The stripped annotation at `parts` (None if the path leaves the schema)."""
    annotation: Any = root
    data = tree
    for part in parts:
        annotation = _pick_model(_strip(annotation), data)
        if annotation is None:
            return None
        origin = get_origin(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if not isinstance(part, str):
                return None
            annotation = field_of(annotation, part)
        elif origin is dict:
            annotation = get_args(annotation)[1]
        elif origin in (list, tuple) and isinstance(part, int):
            args = get_args(annotation)
            annotation = args[0] if origin is list or (len(args) == 2 and args[1] is Ellipsis) else args[min(part, len(args) - 1)]
        else:
            return None
        if annotation is None:
            return None
        data = data.get(part) if isinstance(data, dict) else (
            data[part] if isinstance(data, list) and isinstance(part, int) and part < len(data) else None
        )
    return _pick_model(_strip(annotation), data)


def accepts_none(root: type[BaseModel], parts: Sequence[str | int], tree: Any) -> bool:
    """Whether the field at `parts` takes null (an optional block or value), as opposed to only a default."""
    if not parts:
        return False
    parent = annotation_at(root, parts[:-1], tree)
    if not (isinstance(parent, type) and issubclass(parent, BaseModel)) or not isinstance(parts[-1], str):
        return True
    annotation = field_of(parent, parts[-1])
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return get_origin(annotation) in (Union, types.UnionType) and type(None) in get_args(annotation)


def is_text(annotation: Any) -> bool:
    """Whether a field takes free text (so `--set x=123` means the string '123')."""
    annotation = _strip(annotation)
    if annotation is str:
        return True
    if get_origin(annotation) is Literal:
        return all(isinstance(a, str) for a in get_args(annotation))
    return False
