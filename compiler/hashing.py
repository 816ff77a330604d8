"""Canonical JSON and content hashes: the same recipe gives the same bytes on any host, path or seed."""
from __future__ import annotations

import hashlib
import json
import math
from typing import Any


class UnhashableValue(TypeError):
    pass


def _check(value: Any, path: str = "$") -> None:
    """Refuse values whose JSON form is not deterministic (sets, NaN, objects)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise UnhashableValue(f"{path}: key {key!r} is not a string; convert it before hashing")
            _check(item, f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check(item, f"{path}[{i}]")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise UnhashableValue(f"{path}: {value} has no canonical JSON form; use a finite number")
    elif value is not None and not isinstance(value, (str, int, bool)):
        raise UnhashableValue(f"{path}: {type(value).__name__} cannot be hashed deterministically; convert it to JSON data")


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 text; refuses what it cannot encode deterministically."""
    _check(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
