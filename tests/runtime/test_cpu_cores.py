"""CPU cores as devices (runtime/cpu_cores.py): the core-list format, the split of an RL group's cores, the pin of a
job's process and what the vLLM server is told. The local launcher's use of it is checked in test_launch.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.cpu_cores import ENV, format_cores, parse_cores, split_cores
from runtime.launch.prepare import group_cpu_env
from runtime.plan import Plan, PlannedJob
from runtime.rollout.server import ServerSettings, server_env

ROOT = Path(__file__).resolve().parents[2]


def test_core_lists_parse_and_format_as_ranges() -> None:
    assert parse_cores("0-3,8") == [0, 1, 2, 3, 8]
    assert parse_cores("5, 2-3,3") == [2, 3, 5]
    assert format_cores([8, 0, 1, 2, 3]) == "0-3,8"
    assert format_cores([1]) == "1"
    for text in ("", "a", "3-1", "1-", "-2", "1;2"):
        with pytest.raises(ValueError, match=ENV):
            parse_cores(text)


def test_split_gives_contiguous_disjoint_shares_or_none() -> None:
    assert split_cores([0, 1], 2) == [[0], [1]]
    assert split_cores([3, 0, 1, 2, 4], 2) == [[0, 1, 2], [3, 4]]
    assert split_cores(range(16), 2) == [list(range(8)), list(range(8, 16))]
    assert split_cores([0], 2) is None


def job(job_id: str, kind: str, group: str | None, gpus: int = 0) -> PlannedJob:
    return PlannedJob(id=job_id, stage="s", kind=kind, entry="m:f", depends_on=(), array=None, group=group,
                      resources={"gpus_per_node": gpus}, config={}, estimates={}, hash="0" * 64)


def plan_of(*jobs: PlannedJob) -> Plan:
    return Plan(path=Path("plan.json"), name="t", recipe_dir=Path("."), jobs=jobs)


def test_a_cpu_rl_group_splits_the_cores_trainer_first() -> None:
    sidecar, trainer, other = job("rl-rollout", "rlvr_rollout", "rl"), job("rl", "rlvr_trainer", "rl"), job("sft", "sft", None)
    plan = plan_of(sidecar, trainer, other)  # the sidecar listed first: the trainer still gets the first share
    assert group_cpu_env(plan, trainer, range(4)) == {ENV: "0-1"}
    assert group_cpu_env(plan, sidecar, range(4)) == {ENV: "2-3"}
    assert group_cpu_env(plan, other, range(4)) == {}
    assert group_cpu_env(plan, trainer, [0]) == {}  # one core: nothing to split


def test_a_group_with_gpus_gets_no_cpu_split() -> None:
    trainer, sidecar = job("rl", "rlvr_trainer", "rl", gpus=1), job("rl-rollout", "rlvr_rollout", "rl", gpus=1)
    assert group_cpu_env(plan_of(trainer, sidecar), trainer, range(8)) == {}


def test_the_vllm_server_binds_its_threads_to_the_jobs_cores() -> None:
    settings = ServerSettings(max_model_len=64, max_num_seqs=4)
    assert server_env(settings, {ENV: "1,2-3"})["VLLM_CPU_OMP_THREADS_BIND"] == "1-3"
    assert "VLLM_CPU_OMP_THREADS_BIND" not in server_env(settings, {})
    gpu = ServerSettings(max_model_len=64, max_num_seqs=4, device="cuda")
    assert "VLLM_CPU_OMP_THREADS_BIND" not in server_env(gpu, {ENV: "1"})


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to pin to one of them")
def test_a_job_process_pins_itself_before_torch_starts_its_threads(tmp_path: Path) -> None:
    last = max(os.sched_getaffinity(0))
    code = ("import json, os, sys; from runtime.run_job import main; "
            "import runtime.run_job as rj; rj.resolve_entry = lambda e: (lambda job: print(json.dumps("
            "{'affinity': sorted(os.sched_getaffinity(0)), 'omp': os.environ.get('OMP_NUM_THREADS'), "
            "'threads': __import__('torch').get_num_threads()}))); sys.exit(main(sys.argv[1:]))")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"id": "j", "kind": "k"}))
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update({ENV: str(last), "PYTHONPATH": str(ROOT)})
    result = subprocess.run([sys.executable, "-c", code, "--config", str(config), "--entry", "m:f"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen == {"affinity": [last], "omp": "1", "threads": 1}
