"""The task YAMLs an eval job runs, written into its `<out>/tasks/` folder before the harness starts.

- bpb sets become generated lm-eval `loglikelihood_rolling` tasks (`bits_per_byte`), one file per set, named
  `bpb.<suite>.<set>`, over a local jsonl (`<path>/<split>.jsonl`, toy-world layout, or a file) or a Hub dataset.
  BOS: lm-eval prefixes every rolling window with the tokenizer's BOS id itself (its `prefix_token_id`) and never
  reads doc_to_text for this output type, so nothing is added, and `add_bos_token` is never set (it would double
  BOS: docs/notes/lm-eval-on-vllm-cpu.md, pitfall 5).
- A user task file is copied with the paths inside it made absolute against ITS OWN folder (lm-eval resolves
  `dataset_kwargs.data_files` against the process's working directory): `include:` points at the copy of the
  included file (copied the same way), `data_files` / `data_dir` and an explicitly relative `dataset_path`
  ("./...", "../...") become absolute, `!function module.fn` tags are kept, and the .py files of the source folder
  are copied beside the copy so the tags still resolve. Files from one source folder land in one folder of
  `tasks/` (relative includes between them keep working; two source folders never collide).
- A registered lm-eval task (file null) is passed by name: nothing is written.

Runs in the trainer's environment (PyYAML only, which lm-eval's environment has too).
Test: `python -m pytest tests/runtime/test_eval_parts.py -q -k task`.
"""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml


class TaskFileError(ValueError):
    """A user task file cannot be read or copied; the message is one line starting with the file."""


@dataclass(frozen=True)
class TaskRef:
    """One task the harness loads: `spec` is what lm-eval's TaskManager gets (a YAML path, or a registered name);
    `shown` is how errors name it (the file as the recipe wrote it, or None for a registered task)."""

    name: str
    spec: str
    shown: str | None


class FunctionTag(str):
    """A `!function module.fn` value, kept as text (lm-eval imports it when it loads the copy)."""


class _Loader(yaml.SafeLoader):
    pass


class _Dumper(yaml.SafeDumper):
    pass


_Loader.add_constructor("!function", lambda loader, node: FunctionTag(loader.construct_scalar(node)))
_Dumper.add_representer(FunctionTag, lambda dumper, value: dumper.represent_scalar("!function", str(value)))


def one_line(text: str) -> str:
    return re.sub(r"\s+", " ", str(text)).strip()


def bpb_task_name(suite: str, set_name: str) -> str:
    return f"bpb.{suite}.{set_name}"


def bpb_task(name: str, dataset: Mapping[str, Any], recipe_dir: Path) -> dict[str, Any]:
    """The lm-eval config of one bpb set (a DatasetRef: path | hf, subset, split, text_field)."""
    split = dataset.get("split") or "validation"
    config: dict[str, Any] = {"task": name}
    if dataset.get("path"):
        path = (recipe_dir / Path(dataset["path"]).expanduser()).resolve()
        files = path / f"{split}.jsonl" if path.is_dir() else path
        config.update(dataset_path="json", dataset_kwargs={"data_files": {split: str(files)}})
    elif dataset.get("hf"):
        config["dataset_path"] = dataset["hf"]
        if dataset.get("subset"):
            config["dataset_name"] = dataset["subset"]
    else:
        raise ValueError(f"bpb set {name}: neither path nor hf: {dict(dataset)}")
    field = dataset.get("text_field") or "text"
    config.update(
        test_split=split,
        output_type="loglikelihood_rolling",
        doc_to_text="",
        doc_to_target="{{" + field + "}}" if field.isidentifier() else "{{doc[" + repr(field) + "]}}",
        metric_list=[{"metric": "bits_per_byte", "aggregation": "bits_per_byte", "higher_is_better": False}],
        metadata={"version": 1.0},
    )
    return config


def write_yaml(path: Path, data: Mapping[str, Any], header: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.dump(dict(data), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1000)
    path.write_text(header + text, encoding="utf-8")
    return path


def _absolute(value: Any, base: Path) -> Any:
    """Relative local paths (in a str, list or dict of them) made absolute against `base`; URLs and globs kept."""
    if isinstance(value, str):
        if "://" in value or Path(value).expanduser().is_absolute():
            return str(Path(value).expanduser()) if value.startswith("~") else value
        return str((base / value).resolve())
    if isinstance(value, list):
        return [_absolute(v, base) for v in value]
    if isinstance(value, dict):
        return {k: _absolute(v, base) for k, v in value.items()}
    return value


class UserTaskCopier:
    """Copies user task files (and what they include) into `dest`, each source folder into its own subfolder."""

    def __init__(self, dest: Path, recipe_dir: Path) -> None:
        self.dest, self.recipe_dir = dest, recipe_dir
        self.copies: dict[Path, Path] = {}  # source file -> its copy
        self.folders: dict[Path, Path] = {}  # source folder -> its folder under dest

    def _folder(self, source_dir: Path) -> Path:
        if source_dir not in self.folders:
            folder = self.dest / f"{len(self.folders):02d}-{source_dir.name or 'root'}"
            folder.mkdir(parents=True, exist_ok=True)
            for module in source_dir.glob("*.py"):  # what `!function module.fn` tags import
                shutil.copy2(module, folder / module.name)
            self.folders[source_dir] = folder
        return self.folders[source_dir]

    def copy(self, source: Path, shown: str) -> Path:
        """The copy of `source` (made once); `shown` names the file in errors."""
        source = source.resolve()
        if source in self.copies:
            return self.copies[source]
        if not source.is_file():
            raise TaskFileError(f"{shown}: not found (looked for {source})")
        try:
            config = yaml.load(source.read_text(encoding="utf-8"), Loader=_Loader)  # noqa: S506 - SafeLoader subclass
        except yaml.YAMLError as exc:
            raise TaskFileError(f"{shown}: invalid YAML: {one_line(exc)}") from None
        if not isinstance(config, dict):
            raise TaskFileError(f"{shown}: a task file must be a mapping, got {type(config).__name__}")
        target = self._folder(source.parent) / source.name
        self.copies[source] = target  # before the includes: an include cycle stops here (lm-eval reports it)
        base = source.parent
        if "include" in config:
            includes = config["include"] if isinstance(config["include"], list) else [config["include"]]
            copied = [str(self.copy(base / str(inc), f"{shown}: include {inc}")) for inc in includes]
            config["include"] = copied if isinstance(config["include"], list) else copied[0]
        kwargs = config.get("dataset_kwargs")
        if isinstance(kwargs, dict):
            for key in ("data_files", "data_dir"):
                if key in kwargs:
                    kwargs[key] = _absolute(kwargs[key], base)
        path = config.get("dataset_path")
        if isinstance(path, str) and path.startswith(("./", "../")):
            config["dataset_path"] = str((base / path).resolve())
        write_yaml(target, config, f"# {source}, copied by runtime.evals with its paths made absolute\n")
        return target


def write_tasks(suites: Mapping[str, Mapping[str, Any]], recipe_dir: Path, tasks_dir: Path) -> dict[str, list[TaskRef]]:
    """Write every suite's task files into `tasks_dir` (emptied first); returns suite -> its tasks, in order."""
    shutil.rmtree(tasks_dir, ignore_errors=True)
    tasks_dir.mkdir(parents=True)
    copier = UserTaskCopier(tasks_dir / "user", recipe_dir)
    out: dict[str, list[TaskRef]] = {}
    for suite, spec in suites.items():
        refs: list[TaskRef] = []
        if spec["kind"] == "bpb":
            for set_name, dataset in spec["sets"].items():
                name = bpb_task_name(suite, set_name)
                path = write_yaml(tasks_dir / "bpb" / f"{name}.yaml", bpb_task(name, dataset, recipe_dir))
                refs.append(TaskRef(set_name, str(path), None))
        elif spec["kind"] == "lm_eval":
            for task in spec["tasks"]:
                if task.get("file"):
                    copy = copier.copy(recipe_dir / task["file"], task["file"])
                    refs.append(TaskRef(task["name"], str(copy), task["file"]))
                else:
                    refs.append(TaskRef(task["name"], task["name"], None))
        else:
            raise ValueError(f"suite {suite}: unknown kind {spec['kind']!r} (bpb, lm_eval)")
        out[suite] = refs
    return out
