"""The runtime reads the compiler's plan: order, entries, and a clear failure for what is not built yet."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from compiler.cli import main
from compiler.job_common import JOB_ENTRIES
from compiler.stage_jobs import STAGE_BUILDERS
from runtime.plan import PlanError, load_plan
from runtime.run_job import EXIT_NOT_IMPLEMENTED
from spec.stages import STAGE_KINDS

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def tiny_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    assert main(["compile", str(ROOT / "recipes" / "tiny-think.yaml"), "-o", str(tmp_path)]) == 0
    capsys.readouterr()
    return tmp_path / "tiny-think" / "plan.json"


def test_every_stage_kind_has_a_builder_and_every_job_kind_an_entry(tiny_plan: Path) -> None:
    assert set(STAGE_BUILDERS) == set(STAGE_KINDS)
    for job in load_plan(tiny_plan).jobs:
        assert JOB_ENTRIES[job.kind] == job.entry
        assert ":" in job.entry and job.entry.startswith("runtime.")


def test_load_plan_reads_jobs_in_dependency_order(tiny_plan: Path) -> None:
    plan = load_plan(tiny_plan)
    assert plan.name == "tiny-think"
    assert plan.recipe_dir == (ROOT / "recipes").resolve()
    seen: set[str] = set()
    for job in plan.topological():
        assert set(job.depends_on) <= seen
        seen.add(job.id)
    assert plan.job("sft").output_name == f"sft-{plan.job('sft').hash[:12]}"


def test_load_plan_refuses_other_format_versions_and_bad_order(tiny_plan: Path, tmp_path: Path) -> None:
    data = json.loads(tiny_plan.read_text())
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**data, "format_version": 99}))
    with pytest.raises(PlanError, match="format_version 99"):
        load_plan(bad)
    bad.write_text(json.dumps({**data, "jobs": list(reversed(data["jobs"]))}))
    with pytest.raises(PlanError, match="do not come before it"):
        load_plan(bad)


def test_unbuilt_entry_fails_clearly(tiny_plan: Path) -> None:
    config = tiny_plan.parent / "jobs" / "rlvr" / "config.json"
    result = subprocess.run(
        [sys.executable, "-m", "runtime.run_job", "--config", str(config), "--entry", "runtime.not_here:run"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert result.returncode == EXIT_NOT_IMPLEMENTED
    assert result.stderr.strip() == "rlvr: not implemented yet: rlvr_trainer (runtime.not_here:run)"
