"""CSV tables of swarms trained elsewhere (`recipe mix fit`): ratios, metrics and candidates, joined on the run id.

Layout (what other mix tools write): the first column is the run id, every other column a source (ratios,
candidates) or a metric (metrics), one header row. Every problem is collected as one `FILE:LINE: message` line
(`TableError.lines`): a ragged row, an empty or repeated run id, a cell that is not a finite number, ratios that are
negative or do not sum to 1 (within `SUM_TOLERANCE`), run ids present on one side only, an objective metric that is
not a column, candidate columns that are not the ratios' sources.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from typing import Sequence

SUM_TOLERANCE = 1e-3
MAX_LINES = 20


class TableError(ValueError):
    """Bad input: one `FILE:LINE: message` line per problem."""

    def __init__(self, lines: Sequence[str]):
        self.lines = list(lines)
        super().__init__("\n".join(self.lines))

    def shown(self) -> list[str]:
        extra = len(self.lines) - MAX_LINES
        return self.lines[:MAX_LINES] + ([f"... and {extra} more"] if extra > 0 else [])


@dataclass
class Table:
    path: str
    id_column: str
    columns: list[str]
    header_line: int = 1
    ids: list[str] = field(default_factory=list)
    rows: list[list[float]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)  # file line of each row
    skipped: set[str] = field(default_factory=set)  # ids of rows already reported (not joined on again)

    def line_of(self, run_id: str) -> int:
        return self.lines[self.ids.index(run_id)]

    def column(self, name: str) -> list[float]:
        j = self.columns.index(name)
        return [row[j] for row in self.rows]


def _number(cell: str) -> float | None:
    try:
        value = float(cell)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def read_table(path: str, what: str, errors: list[str]) -> Table | None:
    """Read a CSV; problems are appended to `errors` (the table is None when it cannot be read at all)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            records = [(line, row) for line, row in _rows(f) if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        errors.append(f"{path}:1: cannot read the {what} file: {getattr(exc, 'strerror', None) or exc}")
        return None
    if not records:
        errors.append(f"{path}:1: empty: a header row (run id, then {what} columns) is needed")
        return None
    header_line, header = records[0]
    header = [h.strip() for h in header]
    if len(header) < 2:
        errors.append(f"{path}:{header_line}: the header has {len(header)} column; a run id column and at least one "
                      f"{what} column are needed")
        return None
    seen: dict[str, int] = {}
    for j, name in enumerate(header):
        if not name:
            errors.append(f"{path}:{header_line}: column {j + 1} has no name")
        elif name in seen:
            errors.append(f"{path}:{header_line}: column '{name}' appears twice (columns {seen[name] + 1} and {j + 1})")
        seen.setdefault(name, j)
    table = Table(path, header[0], header[1:], header_line)
    first_line: dict[str, int] = {}
    for line, row in records[1:]:
        if len(row) != len(header):
            errors.append(f"{path}:{line}: {len(row)} cells, the header has {len(header)}")
            table.skipped.add(row[0].strip())
            continue
        run_id = row[0].strip()
        if not run_id:
            errors.append(f"{path}:{line}: empty run id")
            continue
        if run_id in first_line:
            errors.append(f"{path}:{line}: run '{run_id}' appears again (first on line {first_line[run_id]})")
            continue
        first_line[run_id] = line
        values = []
        for name, cell in zip(header[1:], row[1:]):
            value = _number(cell.strip())
            if value is None:
                problem = f"{cell.strip()!r} is not a finite number" if cell.strip() else "empty cell"
                errors.append(f"{path}:{line}: column '{name}' of run '{run_id}': {problem}")
            values.append(value if value is not None else math.nan)
        table.ids.append(run_id)
        table.rows.append(values)
        table.lines.append(line)
    if not table.ids:
        errors.append(f"{path}:{header_line}: no runs under the header")
    return table


def _rows(f: object) -> list[tuple[int, list[str]]]:
    reader = csv.reader(f)  # type: ignore[arg-type]
    out = []
    for row in reader:
        out.append((reader.line_num, row))
    return out


def check_ratios(table: Table, errors: list[str]) -> None:
    """Every row: non-negative ratios summing to 1 (± SUM_TOLERANCE)."""
    for run_id, row, line in zip(table.ids, table.rows, table.lines):
        if any(math.isnan(v) for v in row):
            continue  # already reported
        negative = [name for name, v in zip(table.columns, row) if v < 0]
        if negative:
            errors.append(f"{table.path}:{line}: run '{run_id}': negative ratio for {', '.join(negative)}")
            continue
        total = sum(row)
        if abs(total - 1.0) > SUM_TOLERANCE:
            errors.append(f"{table.path}:{line}: ratios of run '{run_id}' sum to {total:.6g}, not 1 "
                          f"(tolerance {SUM_TOLERANCE:g})")


def check_join(ratios: Table, metrics: Table, errors: list[str]) -> list[str]:
    """The run ids both tables have (in the ratios' order); a run on one side only is an error on its line."""
    in_metrics, in_ratios = set(metrics.ids) | metrics.skipped, set(ratios.ids) | ratios.skipped
    for run_id, line in zip(ratios.ids, ratios.lines):
        if run_id not in in_metrics:
            errors.append(f"{ratios.path}:{line}: run '{run_id}' has no row in {metrics.path}")
    for run_id, line in zip(metrics.ids, metrics.lines):
        if run_id not in in_ratios:
            errors.append(f"{metrics.path}:{line}: run '{run_id}' has no row in {ratios.path}")
    return [r for r in ratios.ids if r in set(metrics.ids)]


def check_objective(metrics: Table, names: Sequence[str], errors: list[str]) -> None:
    from compiler.diagnostics import did_you_mean

    for name in names:
        if name not in metrics.columns:
            errors.append(f"{metrics.path}:{metrics.header_line}: objective metric '{name}' is not a column"
                          f"{did_you_mean(name, metrics.columns)}; metrics: {', '.join(metrics.columns)}")


def check_candidates(candidates: Table, sources: Sequence[str], errors: list[str]) -> None:
    header_line = candidates.header_line
    missing = [s for s in sources if s not in candidates.columns]
    unknown = [c for c in candidates.columns if c not in sources]
    if missing:
        errors.append(f"{candidates.path}:{header_line}: missing source column(s) {', '.join(missing)} "
                      f"(the ratios' sources: {', '.join(sources)})")
    if unknown:
        errors.append(f"{candidates.path}:{header_line}: unknown column(s) {', '.join(unknown)} "
                      f"(the ratios' sources: {', '.join(sources)})")
