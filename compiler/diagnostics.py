"""Located diagnostics: every user mistake becomes one `file:line:col: path: message` line."""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable, Literal


@dataclass(frozen=True)
class Loc:
    """A position in a source (1-based line and column)."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


# Characters that end a line (str.splitlines): recipe text quoted in a message is escaped so each diagnostic stays one line.
_LINE_BREAKS = str.maketrans({c: repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"})


@dataclass(frozen=True)
class Diagnostic:
    loc: Loc
    path: str
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        tag = "warning: " if self.severity == "warning" else ""
        return f"{self.loc}: {tag}{where}{self.message}".translate(_LINE_BREAKS)


class RecipeError(Exception):
    """One or more errors in a recipe; str() gives one line per error."""

    def __init__(self, diagnostics: Iterable[Diagnostic]):
        self.diagnostics = list(diagnostics)
        super().__init__("\n".join(str(d) for d in self.diagnostics))


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or ''."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def format_path(parts: Iterable[str | int]) -> str:
    """('stages', 3, 'beta') -> 'stages[3].beta'."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out
