"""Recipes read from git: `REV:path` (a revision and a path relative to the repository root).

The blob is extracted into a temporary folder that mirrors the repository layout, together with
every file it `extends` (and a `cluster: FILE.yaml` profile, and its eval task files), all from the *same* revision, so a
variant at `HEAD~1` is compiled against its base as it was at `HEAD~1`. The copy is compiled in
place (not with `origin`, which would resolve `extends` against the working tree), and every
diagnostic that names the temporary folder is rewritten to name `REV:path` instead.

Git runs with argument lists (no shell). Unknown revisions and paths are RecipeErrors.
"""
from __future__ import annotations

import posixpath
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from compiler.diagnostics import Diagnostic, Loc, RecipeError
from compiler.eval_tasks import TaskLoader
from spec.evals import is_task_file


@dataclass(frozen=True)
class Source:
    """A recipe ready to compile: `path` to read, `origin` for compile_recipe, `display` for headers."""

    path: Path
    origin: Path | None
    display: str
    rewrite: Callable[[str], str] = lambda text: text


def is_git_spec(arg: str) -> bool:
    """`REV:path`, unless a file of that name exists (paths with ':' that exist are files)."""
    return ":" in arg and not Path(arg).exists() and not arg.startswith(":")


def _error(spec: str, message: str) -> RecipeError:
    return RecipeError([Diagnostic(Loc(spec, 1, 1), "", message)])


def _git(args: list[str], cwd: Path | str | None = None) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=False)
    except OSError as exc:  # git not installed
        raise RecipeError([Diagnostic(Loc("<git>", 1, 1), "", f"cannot run git: {exc}")]) from None


def repo_root(spec: str, cwd: Path | None = None) -> Path:
    result = _git(["rev-parse", "--show-toplevel"], cwd)
    if result.returncode != 0:
        raise _error(spec, "not inside a git repository (REV:path needs one; is this meant to be a file?)")
    return Path(result.stdout.decode().strip())


def _repo_relative(spec: str, root: Path, rel: str) -> str:
    """A path inside the repository, posix, normalized. `./x` and `../x` are relative to the
    working directory (as in git); anything else is relative to the repository root."""
    if rel.startswith(("./", "../")) or rel in (".", ".."):
        absolute = (Path.cwd() / rel).resolve()
        try:
            rel = absolute.relative_to(root.resolve()).as_posix()
        except ValueError:
            raise _error(spec, f"path '{rel}' is outside the repository {root}") from None
    norm = posixpath.normpath(rel)
    if not rel or norm.startswith("../") or norm in (".", "..") or norm.startswith("/"):
        raise _error(spec, f"expected REV:path with a file path relative to the repository root, got '{rel}'")
    return norm


def _blob(root: Path, commit: str, rel: str) -> bytes | None:
    kind = _git(["cat-file", "-t", f"{commit}:{rel}"], root)
    if kind.returncode != 0 or kind.stdout.strip() != b"blob":
        return None
    return _git(["cat-file", "blob", f"{commit}:{rel}"], root).stdout


def _referenced(text: bytes, rel: str, top: str) -> list[str]:
    """Repository paths a recipe file refers to: its `extends` (relative to itself), a `cluster: FILE.yaml`
    profile (compose resolves it against the top-level recipe's folder), its eval task files (relative to
    itself), and a task file's `include`."""
    try:
        data: Any = yaml.load(text, Loader=TaskLoader)  # a SafeLoader that also reads lm-eval's !function tags
    except yaml.YAMLError:
        return []  # the compiler reports the syntax error with its location
    if not isinstance(data, dict):
        return []
    here = posixpath.dirname(rel)
    out = [posixpath.normpath(posixpath.join(here, task)) for task in _task_files(data)]
    for key in ("extends", "include"):
        if isinstance(data.get(key), str):
            out.append(posixpath.normpath(posixpath.join(here, data[key])))
    cluster = data.get("cluster")
    if isinstance(cluster, dict):
        cluster = cluster.get("profile")
    if isinstance(cluster, str) and cluster.endswith((".yaml", ".yml")):
        out.append(posixpath.normpath(posixpath.join(posixpath.dirname(top), cluster)))
    return [p for p in out if not p.startswith("../") and p not in (".", "..")]


def _task_files(data: dict[str, Any]) -> list[str]:
    """The task YAML files an `evals` block names."""
    evals = data.get("evals")
    suites = evals.get("suites") if isinstance(evals, dict) else None
    if not isinstance(suites, dict):
        return []
    tasks = [t for s in suites.values() if isinstance(s, dict) and isinstance(s.get("tasks"), list) for t in s["tasks"]]
    return [t for t in tasks if isinstance(t, str) and is_task_file(t)]


@contextmanager
def git_source(spec: str) -> Iterator[Source]:
    """Extract `REV:path` (and what it extends, from the same revision) into a temporary folder."""
    rev, _, rel_arg = spec.partition(":")
    root = repo_root(spec)
    if not rev:
        raise _error(spec, "expected REV:path (e.g. HEAD~1:recipes/x.yaml)")
    resolved = _git(["rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], root)
    if rev.startswith("-") or resolved.returncode != 0:
        raise _error(spec, f"unknown git revision '{rev}'")
    commit = resolved.stdout.decode().strip()
    rel = _repo_relative(spec, root, rel_arg)
    text = _blob(root, commit, rel)
    if text is None:
        raise _error(spec, f"no file '{rel}' in git revision '{rev}'")
    with tempfile.TemporaryDirectory(prefix="recipe-git-") as tmp:
        base = Path(tmp).resolve()
        todo: list[tuple[str, bytes]] = [(rel, text)]
        seen = {rel}
        while todo:
            path, data = todo.pop()
            target = base / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            for ref in _referenced(data, path, rel):
                if ref in seen:
                    continue
                seen.add(ref)
                blob = _blob(root, commit, ref)
                if blob is not None:  # a missing base: compose reports it, renamed to REV:path
                    todo.append((ref, blob))
        prefixes = [str(base) + "/"]
        try:  # compose names files below the working directory relative to it
            prefixes.append(str(base.relative_to(Path.cwd().resolve())) + "/")
        except ValueError:
            pass

        def rewrite(message: str) -> str:
            for prefix in prefixes:
                message = message.replace(prefix, f"{rev}:")
            return message

        try:
            yield Source(base / rel, None, spec, rewrite)
        except RecipeError as exc:
            raise RecipeError(
                [Diagnostic(Loc(rewrite(d.loc.file), d.loc.line, d.loc.col), d.path, rewrite(d.message), d.severity)
                 for d in exc.diagnostics]
            ) from None
