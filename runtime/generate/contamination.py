"""Decontamination shared by the `decontaminate` job and the generation jobs: the recipe's eval sets as an n-gram
index (`runtime.generate.ngrams.EvalIndex`), and a scan of training rows that says which rows overlap which eval
items."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from runtime.generate.ngrams import EvalIndex
from runtime.generate.records import load_rows, record_texts


class Contaminated(RuntimeError):
    """policy: fail, and a training dataset overlaps an eval set; the message is one line."""


def eval_index(job: Mapping[str, Any], settings: Mapping[str, Any]) -> EvalIndex:
    items: dict[str, list[str]] = {}
    for name, ref in settings["eval_sets"].items():
        field_name = ref.get("text_field") or "text"
        rows = load_rows(job, ref)
        if rows and field_name not in rows[0]:
            raise ValueError(f"eval set {name}: rows have no field {field_name!r} (they have: {', '.join(sorted(rows[0]))})")
        items[name] = [" ".join(record_texts(r.get(field_name))) for r in rows]
    return EvalIndex(items, n=int(settings.get("ngram", 13)))


@dataclass
class ScanResult:
    rows: int = 0
    contaminated: list[int] = field(default_factory=list)
    by_eval_set: dict[str, dict[str, int]] = field(default_factory=dict)  # set -> {"rows", "items"}

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "contaminated": len(self.contaminated), "by_eval_set": self.by_eval_set}


def scan(index: EvalIndex, rows: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> ScanResult:
    """Which rows have a field whose text overlaps an eval item; per eval set, rows hit and distinct items hit."""
    result = ScanResult(rows=len(rows))
    items: dict[str, set[int]] = {}
    row_counts: dict[str, int] = {}
    for i, row in enumerate(rows):
        hits: set[tuple[str, int]] = set()
        for name in fields:
            for text in record_texts(row.get(name)):
                hits.update(index.matches(text))
        if hits:
            result.contaminated.append(i)
            for eval_set in {s for s, _ in hits}:
                row_counts[eval_set] = row_counts.get(eval_set, 0) + 1
            for eval_set, item in hits:
                items.setdefault(eval_set, set()).add(item)
    result.by_eval_set = {s: {"rows": row_counts[s], "items": len(items[s])} for s in sorted(row_counts)}
    return result


def summary(name: str, result: ScanResult) -> str:
    parts = ", ".join(f"{s}: {c['rows']} rows / {c['items']} items" for s, c in result.by_eval_set.items())
    return f"{name}: {len(result.contaminated)} of {result.rows} rows overlap eval data" + (f" ({parts})" if parts else "")


def apply_policy(job: Mapping[str, Any], rows: list[dict[str, Any]], fields: Sequence[str], settings: Mapping[str, Any],
                 label: str, what: str) -> tuple[list[dict[str, Any]], int]:
    """A generation job's own output against the eval sets: (rows kept, rows overlapping). `drop` leaves the
    overlapping rows out, `fail` raises Contaminated (one line), `report` keeps them."""
    result = scan(eval_index(job, settings), rows, fields)
    print(f"{label}: {summary(what, result)}", flush=True)
    if result.contaminated and settings["policy"] == "fail":
        raise Contaminated(f"{label}: {summary(what, result)} (policy: fail)")
    if settings["policy"] != "drop":
        return rows, len(result.contaminated)
    dropped = set(result.contaminated)
    return [r for i, r in enumerate(rows) if i not in dropped], len(dropped)
