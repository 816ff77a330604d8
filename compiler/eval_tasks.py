"""What an lm-eval task reports, known at compile time without importing lm-eval.

A task YAML file of the user's is read here (following its `include:` chain) for its task name, output type,
metrics and filters; a mistake in it is a located one-liner in *that* file. Tasks that ship with lm-eval are
looked up in KNOWN_TASK_METRICS (a suite's `metrics:` map adds others).

Metric naming (shared with runtime/evals): lm-eval keys a result "<metric>,<filter>"; our name drops the filter
when the task has one filter (or none), and is "<metric>_<filter>" when it has several.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from compiler.diagnostics import Diagnostic, Loc

OUTPUT_TYPES = ("generate_until", "loglikelihood", "loglikelihood_rolling", "multiple_choice")

# lm-eval's default metrics per output type (lm_eval.api.registry.DEFAULT_METRIC_REGISTRY), used when a task
# has no metric_list.
DEFAULT_METRICS: dict[str, list[str]] = {
    "loglikelihood": ["perplexity", "acc"],
    "loglikelihood_rolling": ["word_perplexity", "byte_perplexity", "bits_per_byte"],
    "multiple_choice": ["acc", "acc_norm"],
    "generate_until": ["exact_match"],
}

# Metrics of common lm-eval 0.4.13 tasks (our names: filters folded in as described above).
KNOWN_TASK_METRICS: dict[str, list[str]] = {
    "mmlu": ["acc"],
    "arc_easy": ["acc", "acc_norm"],
    "arc_challenge": ["acc", "acc_norm"],
    "hellaswag": ["acc", "acc_norm"],
    "piqa": ["acc", "acc_norm"],
    "winogrande": ["acc"],
    "boolq": ["acc"],
    "openbookqa": ["acc", "acc_norm"],
    "sciq": ["acc", "acc_norm"],
    "csqa": ["acc"],
    "social_iqa": ["acc"],
    "lambada_openai": ["perplexity", "acc"],
    "wikitext": ["word_perplexity", "byte_perplexity", "bits_per_byte"],
    "truthfulqa_mc2": ["acc"],
    "triviaqa": ["exact_match"],
    "gsm8k": ["exact_match_strict-match", "exact_match_flexible-extract"],
    "minerva_math": ["exact_match", "math_verify"],
    "humaneval": ["pass@1"],
    "mbpp": ["pass_at_1"],
    "ifeval": ["prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc", "inst_level_loose_acc"],
}


@dataclass(frozen=True)
class TaskInfo:
    name: str
    metrics: tuple[str, ...]
    file: str | None = None  # as the recipe wrote it
    sha256: str | None = None  # of the file and every file it includes


class TaskFileError(Exception):
    """A located problem in a task file."""

    def __init__(self, diagnostic: Diagnostic):
        super().__init__(str(diagnostic))
        self.diagnostic = diagnostic


class TaskLoader(yaml.SafeLoader):
    """lm-eval task files use `!function module.name`; keep its target as text."""


TaskLoader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")


def display_path(path: Path) -> str:
    """A path as diagnostics show it: relative to the working directory when below it."""
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path) if relative.startswith("..") else relative


def _load(path: Path) -> tuple[dict[str, Any], dict[str, Loc], bytes]:
    """The file's top-level mapping, each top-level key's location, and its bytes."""
    shown = display_path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TaskFileError(Diagnostic(Loc(shown, 1, 1), "", f"cannot read task file: {exc.strerror or exc}")) from None
    loader = TaskLoader(data.decode("utf-8", errors="replace"))
    try:
        node = loader.get_single_node()
        if node is None or not isinstance(node, yaml.MappingNode):
            raise TaskFileError(Diagnostic(Loc(shown, 1, 1), "", "a task file must be a mapping (task: ..., dataset_path: ...)"))
        config: dict[str, Any] = {}
        where: dict[str, Loc] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            config[key] = loader.construct_object(value_node, deep=True)
            mark = key_node.start_mark
            where[key] = Loc(shown, mark.line + 1, mark.column + 1)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = Loc(shown, mark.line + 1, mark.column + 1) if mark else Loc(shown, 1, 1)
        raise TaskFileError(Diagnostic(loc, "", f"invalid YAML: {exc.problem or exc}")) from None
    finally:
        loader.dispose()
    return config, where, data


def _merged(path: Path, seen: tuple[Path, ...] = ()) -> tuple[dict[str, Any], dict[str, Loc], list[bytes]]:
    """The task config with its `include:` chain applied (the including file wins), as lm-eval merges it."""
    config, where, data = _load(path)
    blobs = [data]
    include = config.pop("include", None)
    if include is None:
        return config, where, blobs
    if not isinstance(include, str):
        raise TaskFileError(Diagnostic(where["include"], "include", "must be a file name"))
    parent_path = (path.parent / include).resolve()
    if parent_path in seen or parent_path == path.resolve():
        raise TaskFileError(Diagnostic(where["include"], "include", f"includes itself ({include})"))
    if not parent_path.is_file():
        raise TaskFileError(Diagnostic(where["include"], "include", f"{include} not found (looked for {parent_path})"))
    parent, parent_where, parent_blobs = _merged(parent_path, (*seen, path.resolve()))
    return {**parent, **config}, {**parent_where, **where}, parent_blobs + blobs


def metric_names(metrics: list[str], filters: list[str]) -> list[str]:
    """Our names for a task's metrics under its filters (see the module docstring)."""
    if len(filters) <= 1:
        return list(metrics)
    return [f"{metric}_{flt}" for flt in filters for metric in metrics]


def read_task_file(path: Path, written: str) -> TaskInfo:
    """Name, metrics and content hash of a task YAML file; raises TaskFileError (located) on a mistake."""
    config, where, blobs = _merged(path)
    shown = display_path(path)
    top = Loc(shown, 1, 1)
    if "group" in config and "task" not in config:
        raise TaskFileError(Diagnostic(where.get("group", top), "group", "task groups are not supported: list the group's task files in the suite"))
    name = config.get("task")
    if not isinstance(name, str) or not name:
        raise TaskFileError(Diagnostic(where.get("task", top), "task", "required: the task's name (a string)"))
    output_type = config.get("output_type", "generate_until")
    if output_type not in OUTPUT_TYPES:
        raise TaskFileError(Diagnostic(where.get("output_type", top), "output_type",
                                       f"must be one of {', '.join(OUTPUT_TYPES)} (got {output_type!r})"))
    metrics = DEFAULT_METRICS[output_type]
    if "metric_list" in config:
        entries = config["metric_list"]
        if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) and isinstance(e.get("metric"), str) for e in entries):
            raise TaskFileError(Diagnostic(where["metric_list"], "metric_list", "must be a list of {metric: <name>, ...} entries"))
        metrics = [e["metric"] for e in entries]
    filters = ["none"]
    if "filter_list" in config:
        entries = config["filter_list"]
        if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("name"), str) for e in entries):
            raise TaskFileError(Diagnostic(where["filter_list"], "filter_list", "must be a list of {name: <name>, filter: [...]} entries"))
        filters = [e["name"] for e in entries] or ["none"]
    digest = hashlib.sha256(b"".join(hashlib.sha256(b).digest() for b in blobs)).hexdigest()
    return TaskInfo(name=name, metrics=tuple(metric_names(metrics, filters)), file=written, sha256=digest)
