"""A real single-node Slurm cluster for the tests under tests/slurm (started by scripts/slurm-local).

Run: python -m pytest tests/slurm -q   (as root on Debian; the fixture installs and starts the cluster)

The cluster is left running after the session (a later session reuses it at once); stop it with
`scripts/slurm-local stop`. When the cluster cannot start, the tests fail, they do not skip. On a developer
machine without root, opt out with RECIPE_SLURM_TESTS=0: then they skip.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
SLURM_LOCAL = REPO / "scripts" / "slurm-local"
OPT_OUT = "RECIPE_SLURM_TESTS"


def pytest_configure(config: pytest.Config) -> None:
    # Registered here, not in pyproject.toml, so that the marker lives beside the fixture that serves it.
    config.addinivalue_line(
        "markers", f"slurm: runs against a real single-node Slurm cluster (scripts/slurm-local); {OPT_OUT}=0 skips")
    # pytest leaves the conftest it imported last as sys.modules["conftest"]; test modules in other folders
    # `from conftest import ...` the root one (tests/conftest.py), so hand that name back to it.
    root = REPO / "tests" / "conftest.py"
    for plugin in config.pluginmanager.get_plugins():
        if getattr(plugin, "__file__", None) and Path(plugin.__file__).resolve() == root:
            sys.modules["conftest"] = plugin


def slurm_local(*args: str, timeout: float) -> str:
    """Run `scripts/slurm-local ARGS`; its stdout, or pytest.fail with its stderr."""
    command = f"scripts/slurm-local {' '.join(args)}"
    hint = f"(on a machine without root, set {OPT_OUT}=0 to skip the Slurm tests)"
    try:
        proc = subprocess.run([str(SLURM_LOCAL), *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{command} did not finish within {timeout:.0f}s {hint}", pytrace=False)
    except OSError as exc:
        pytest.fail(f"{command} could not run: {exc} {hint}", pytrace=False)
    if proc.returncode != 0:
        pytest.fail(f"{command} failed (exit {proc.returncode}) {hint}:\n{proc.stderr.strip()}", pytrace=False)
    return proc.stdout


@pytest.fixture(scope="session")
def run_slurm_local() -> Callable[..., str]:
    """`scripts/slurm-local` as a function: run_slurm_local("status", timeout=30) -> its stdout."""
    return slurm_local


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[dict[str, str]]:
    """Install (if needed) and start the cluster; yield the environment clients need ({"SLURM_CONF": ...}).

    The variables are also set in os.environ for the session, since submitit calls sbatch, sacct and scancel
    with this process's environment.
    """
    if os.environ.get(OPT_OUT) == "0":
        pytest.skip(f"{OPT_OUT}=0: tests against a real Slurm cluster are opted out")
    slurm_local("install", timeout=600)
    slurm_local("start", timeout=300)
    env: dict[str, str] = {}
    for line in slurm_local("env", timeout=30).splitlines():
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").partition("=")
            env[name] = value
    assert "SLURM_CONF" in env, "scripts/slurm-local env printed no SLURM_CONF"
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    yield env
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
