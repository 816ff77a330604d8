"""`recipe launch` with the local executor (submitit's LocalExecutor), on a real compiled plan whose
entries are rewritten to the test entries in tests/runtime/launch_entries.py: this checks the executor
(order, inputs, caching, failures, groups, state and report), not training."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, TINY_FULL, run_main, tiny_full_portable

HERE = Path(__file__).resolve().parent
NAME = "tiny-think-full"  # the tiny pipeline with every job kind (mix search, delta pairs): the executor runs them all
TOY = ["arithmetic", "words", "code", "text", "sft", "prompts", "rl", "tokenizer"]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-think-full (3 swarm proxies) compiled in a scratch tree with empty toy-world folders: its plan.json."""
    root = tmp_path_factory.mktemp("launch")
    (root / "recipes").mkdir()
    # its ../data/toy paths resolve in this tree; its eval task files are named by absolute paths
    (root / "recipes" / TINY_FULL.name).write_text(tiny_full_portable(), encoding="utf-8")
    for name in TOY:
        (root / "data" / "toy" / name).mkdir(parents=True)
    result = run_main(["compile", root / "recipes" / TINY_FULL.name, "-o", root / "build", "--set", "data.mix.swarm_size=3"])
    assert result.code == 0, result.err
    return root / "build" / NAME / "plan.json"


@pytest.fixture(autouse=True)
def entries_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """The jobs' processes import launch_entries (and the repo) through PYTHONPATH."""
    monkeypatch.setenv("PYTHONPATH", f"{REPO}:{HERE}")
    monkeypatch.syspath_prepend(str(HERE))


def write_plan(compiled: Path, name: str, entries: dict[str, str] | None = None, edit: Any = None) -> Path:
    """A copy of the plan beside the original (so recipe_dir still resolves), entries -> test entries (which need
    no inference environment: tests/runtime/test_environments.py covers building it)."""
    plan = json.loads(compiled.read_text())
    for job in plan["jobs"]:
        job["entry"] = "launch_entries:group_member" if job["group"] else "launch_entries:record"
        job["entry"] = (entries or {}).get(job["id"], job["entry"])
        job["config"].pop("environment", None)
    if edit:
        edit(plan)
    path = compiled.with_name(f"plan-{name}.json")
    path.write_text(json.dumps(plan, indent=2))
    return path


def launch(plan: Path, runs: Path, *extra: object) -> Any:
    result = run_main(["launch", plan, "--runs", runs, "--allow-dirty", *extra])  # tests run in work trees too
    state_file = runs / NAME / "state.json"
    if state_file.exists():
        json.loads(state_file.read_text())  # valid JSON after every launch
    return result


def state(runs: Path) -> dict[str, dict[str, Any]]:
    return json.loads((runs / NAME / "state.json").read_text())["jobs"]


def records(runs: Path, job_id: str) -> list[dict[str, Any]]:
    folder = Path(state(runs)[job_id]["output_dir"])
    return [json.loads(p.read_text()) for p in sorted(folder.glob("record.*.json"))]


def start_launch(plan: Path, runs: Path, *extra: str, stderr_apart: bool = False) -> Any:
    """`recipe launch PLAN` in the background (a job to act on while it runs): the Popen, text output piped."""
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "compiler.cli", "launch", str(plan), "--runs", str(runs),
                             "--allow-dirty", *extra], cwd=REPO, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE if stderr_apart else subprocess.STDOUT,
                            preexec_fn=_interruptible)


def _interruptible() -> None:
    """Ctrl-C reaches the launch even when pytest itself ignores SIGINT (a shell's background job does, and the
    children inherit it): the Ctrl-C test sends SIGINT."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def status_rows(out: str) -> dict[str, list[str]]:
    """`recipe status` table rows by job: [job, state, id, elapsed, step, loss, tok/s, eta]."""
    return {row[0]: row for row in (line.split() for line in out.splitlines()[3:]) if len(row) == 8}


def wait_until_running(proc: Any, runs: Path, job_id: str, *, marker: str | None = None,
                       timeout: float = 60.0) -> None:
    """Wait until a background `recipe launch` (proc) shows job_id running (and its output holds `marker`)."""
    import time

    deadline = time.time() + timeout
    while True:
        if (runs / NAME / "state.json").exists() and state(runs)[job_id]["state"] == "running" and (
                marker is None or (Path(state(runs)[job_id]["output_dir"]) / marker).exists()):
            return
        assert proc.poll() is None, f"the launch ended (exit {proc.returncode}) before {job_id} ran"
        assert time.time() < deadline, f"{job_id} not running after {timeout:.0f} s"
        time.sleep(0.2)


def calls(runs: Path, job_id: str) -> int:
    log = Path(state(runs)[job_id]["output_dir"]) / "calls.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_runs_in_dependency_order_with_inputs_groups_and_provenance(compiled: Path, tmp_path: Path) -> None:
    plan_path = write_plan(compiled, "order")
    plan = json.loads(plan_path.read_text())
    result = launch(plan_path, tmp_path)
    assert result.code == 0, result.out + result.err
    jobs = state(tmp_path)
    assert {j["state"] for j in jobs.values()} == {"done"}
    for job in plan["jobs"]:
        mine = records(tmp_path, job["id"])
        assert len(mine) == (job["array"]["size"] if job["array"] else 1)
        out = jobs[job["id"]]["output_dir"]
        assert Path(out).name == f"{job['id']}-{job['hash'][:12]}"
        for rec in mine:
            assert rec["env"]["RECIPE_OUTPUT_DIR"] == out
            for parent in job["depends_on"]:
                key = "RECIPE_INPUT_" + parent.upper().replace("-", "_")
                assert rec["env"][key] == jobs[parent]["output_dir"]
                assert rec["start"] >= max(r["end"] for r in records(tmp_path, parent))
            assert rec["pgid"] == rec["pid"]  # its own process group
        config = json.loads((Path(out) / "config.json").read_text())
        assert config["hash"] == job["hash"] and config["config"] == job["config"]
        provenance = json.loads((Path(out) / "job.json").read_text())["git"]
        assert len(provenance["commit"]) == 40 and len(provenance["diff_sha256"]) == 64
    # RL groups start together: each member waited for the other (group_member) and their runs overlap.
    for group in {j["group"] for j in plan["jobs"] if j["group"]}:
        ids = [j["id"] for j in plan["jobs"] if j["group"] == group]
        members = [records(tmp_path, j)[0] for j in ids]
        assert len(members) == 2 and max(m["start"] for m in members) < min(m["end"] for m in members)
        peer = "RECIPE_PEER_" + ids[1].upper().replace("-", "_")
        assert members[0]["env"][peer] == jobs[ids[1]]["output_dir"]  # each finds the other's folder
        # CPU-only group: trainer and sidecar run on disjoint halves of the cores, the trainer on the first
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) >= 2:
            trainer, sidecar = sorted(members, key=lambda m: m["id"] != ids[0])
            assert trainer["affinity"] == cores[:len(cores) - len(cores) // 2]
            assert sidecar["affinity"] == cores[len(cores) - len(cores) // 2:]
            assert trainer["env"]["RECIPE_CPU_CORES"] and sidecar["env"]["RECIPE_CPU_CORES"]
    report = json.loads((tmp_path / NAME / "report.json").read_text())
    assert report["ok"] and report["jobs"]["sft"]["final_loss"] == 1.25
    assert "loss 1.2500" in result.out


def test_cache_dry_run_force_and_one_edited_hash(compiled: Path, tmp_path: Path) -> None:
    plan_path = write_plan(compiled, "cache")
    dry = launch(plan_path, tmp_path, "--dry-run")
    assert dry.code == 0 and "no output yet" in dry.out and not tmp_path.joinpath(NAME).exists()
    assert launch(plan_path, tmp_path).code == 0
    ids = list(state(tmp_path))
    assert launch(plan_path, tmp_path).code == 0
    assert {j["state"] for j in state(tmp_path).values()} == {"cached"}
    assert all(calls(tmp_path, j) == (3 if j in ("mix-swarm", "mix-swarm-eval") else 1) for j in ids)
    dry = launch(plan_path, tmp_path, "--dry-run", "--force")
    assert dry.code == 0 and "--force" in dry.out
    assert "DONE.json present" in launch(plan_path, tmp_path, "--dry-run").out
    assert launch(plan_path, tmp_path, "--force", "--only", "sft").code == 0
    assert [j for j in ids if state(tmp_path)[j]["state"] == "done"] == ["sft"]

    def edit(plan: dict[str, Any]) -> None:
        next(j for j in plan["jobs"] if j["id"] == "dpo")["hash"] = "f" * 64

    edited = write_plan(compiled, "cache-edited", edit=edit)
    assert launch(edited, tmp_path).code == 0
    ran = [j for j, s in state(tmp_path).items() if s["state"] == "done"]
    assert ran == ["dpo"] and calls(tmp_path, "dpo") == 1 and state(tmp_path)["dpo"]["output_dir"].endswith("dpo-ffffffffffff")


def test_a_new_hash_says_what_changed_since_the_last_run(compiled: Path, tmp_path: Path) -> None:
    assert launch(write_plan(compiled, "why"), tmp_path).code == 0

    def edit(plan: dict[str, Any]) -> None:
        jobs = {j["id"]: j for j in plan["jobs"]}
        jobs["sft"]["config"]["optim"]["lr"] = 2e-4
        jobs["sft"]["hash"] = "a" * 64
        jobs["dpo"]["hash"] = "b" * 64  # same config, new inputs

    dry = launch(write_plan(compiled, "why-edited", edit=edit), tmp_path, "--dry-run")
    assert dry.code == 0
    lines = {line.split()[2]: line for line in dry.out.splitlines() if line.startswith("would run")}
    assert set(lines) == {"sft", "dpo"}
    assert "changed: optim.lr 0.0005 → 0.0002" in lines["sft"]
    assert "parent changed" in lines["dpo"]


def test_a_failing_job_cancels_its_dependents(compiled: Path, tmp_path: Path) -> None:
    plan_path = write_plan(compiled, "fail", {"long-context": "launch_entries:fail"})
    result = launch(plan_path, tmp_path)
    assert result.code != 0
    jobs = state(tmp_path)
    assert jobs["long-context"]["state"] == "failed" and "boom" in jobs["long-context"]["reason"]
    for job_id in ["sft", "dpo-delta-pairs", "dpo", "rlvr", "rlvr-rollout"]:
        assert jobs[job_id]["state"] == "cancelled", job_id
        assert calls(tmp_path, job_id) == 0
    assert all(jobs[j]["state"] == "done" for j in ["mix-swarm", "mix-fit", "mix-solve", "pretrain", "midtrain"])
    assert json.loads((tmp_path / NAME / "report.json").read_text())["ok"] is False
    assert not (Path(jobs["long-context"]["output_dir"]) / "DONE.json").exists()


def test_missing_entries_fail_up_front_unless_not_run(compiled: Path, tmp_path: Path) -> None:
    plan_path = write_plan(compiled, "missing", {"dpo": "runtime.nope:run_dpo", "rlvr": "launch_entries:no_such_function"})
    result = launch(plan_path, tmp_path)
    assert result.code == 2
    assert result.err_lines == [
        "dpo: not implemented yet: dpo (runtime.nope:run_dpo); --skip-unimplemented runs the rest",
        "rlvr: not implemented yet: rlvr_trainer (launch_entries:no_such_function); --skip-unimplemented runs the rest",
    ]
    assert not (tmp_path / NAME).exists()
    assert launch(plan_path, tmp_path, "--dry-run").code == 2
    # Jobs outside --only (and not ancestors of it) are not run, so they need no entry.
    result = launch(plan_path, tmp_path, "--only", "mix-fit")
    assert result.code == 0, result.err
    jobs = state(tmp_path)
    assert [j for j, s in jobs.items() if s["state"] == "done"] == ["mix-swarm", "mix-swarm-eval", "mix-fit"]
    assert jobs["dpo"]["state"] == "skipped"


def test_skip_unimplemented_runs_the_rest_and_reports_what_it_skipped(compiled: Path, tmp_path: Path) -> None:
    plan_path = write_plan(compiled, "skip", {"dpo-delta-pairs": "runtime.nope:run", "rlvr-rollout": "runtime.nope:run"})
    result = launch(plan_path, tmp_path, "--skip-unimplemented")
    assert result.code == 0, result.err
    jobs = state(tmp_path)
    assert jobs["dpo-delta-pairs"]["state"] == "skipped" and "not implemented yet: delta_pairs" in jobs["dpo-delta-pairs"]["reason"]
    assert jobs["dpo"]["state"] == "skipped" and "needs dpo-delta-pairs" in jobs["dpo"]["reason"]
    for job_id in ("rlvr", "rlvr-rollout", "rlvr-random-reward", "rlvr-random-reward-rollout"):  # below dpo, or its group
        assert jobs[job_id]["state"] == "skipped" and calls(tmp_path, job_id) == 0, job_id
    assert all(jobs[j]["state"] == "done" for j in ["mix-swarm", "mix-fit", "mix-solve", "pretrain", "sft"])
    report = json.loads((tmp_path / NAME / "report.json").read_text())
    assert report["ok"] is True
    assert "not implemented yet" in result.out


def test_missing_local_paths_fail_up_front(compiled: Path, tmp_path: Path) -> None:
    def edit(plan: dict[str, Any]) -> None:
        next(j for j in plan["jobs"] if j["id"] == "sft")["config"]["tokenizer"] = "../data/toy/missing-tokenizer"

    result = launch(write_plan(compiled, "paths", edit=edit), tmp_path)
    assert result.code == 2
    assert len(result.err_lines) == 1 and result.err_lines[0].startswith("sft: tokenizer: ../data/toy/missing-tokenizer not found")
    assert not (tmp_path / NAME).exists()


def test_launching_a_recipe_compiles_it_first(compiled: Path, tmp_path: Path) -> None:
    recipe = compiled.parents[2] / "recipes" / TINY_FULL.name
    result = run_main(["launch", recipe, "--build", tmp_path / "build", "--runs", tmp_path / "runs", "--dry-run",
                       "--set", "data.mix.swarm_size=3"])
    assert (tmp_path / "build" / NAME / "plan.json").exists()
    from runtime.run_job import resolve_entry

    plan = json.loads((tmp_path / "build" / NAME / "plan.json").read_text())
    missing = [f"{j['id']}: not implemented yet: {j['kind']} ({j['entry']}); --skip-unimplemented runs the rest" for j in plan["jobs"] if resolve_entry(j["entry"]) is None]
    assert result.code == (2 if missing else 0)
    assert all(line in result.err_lines for line in missing)
    assert not (tmp_path / "runs").exists()


def test_status_and_logs_of_a_failed_run(compiled: Path, tmp_path: Path) -> None:
    assert launch(write_plan(compiled, "status-fail", {"long-context": "launch_entries:fail"}), tmp_path).code != 0
    result = run_main(["status", NAME, "--runs", tmp_path])
    assert result.code == 1  # a job failed
    rows = status_rows(result.out)
    assert rows["pretrain"][1] == "done" and rows["pretrain"][4] == "1/489" and rows["pretrain"][5] == "2.5000"
    assert rows["long-context"][1] == "failed" and rows["sft"][1] == "cancelled"
    assert "long-context failed: " in result.out and "boom" in result.out
    assert any(line.startswith("  | ") and "boom" in line for line in result.out.splitlines())  # the log's tail
    logs = run_main(["logs", tmp_path / NAME, "long-context"])
    assert logs.code == 0 and "RuntimeError: long-context: boom" in logs.out and "_log.err <==" in logs.out
    assert run_main(["logs", tmp_path / NAME, "nope"]).err.startswith("recipe: nope: no such job")
    assert run_main(["status", "missing-run", "--runs", tmp_path]).code == 2
    assert "nothing to cancel" in run_main(["cancel", NAME, "--runs", tmp_path]).out


def test_cancel_stops_a_running_local_job_and_its_dependents(compiled: Path, tmp_path: Path) -> None:
    proc = start_launch(write_plan(compiled, "cancel", {"sft": "launch_entries:slow"}), tmp_path)
    try:
        wait_until_running(proc, tmp_path, "sft", marker="started")
        cancelled = run_main(["cancel", NAME, "sft", "--runs", tmp_path])
        assert cancelled.code == 0 and "cancelled sft" in cancelled.out
        output, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1, output
    jobs = state(tmp_path)
    assert jobs["sft"]["state"] == "cancelled" and jobs["sft"]["reason"] == "recipe cancel"
    assert jobs["dpo-delta-pairs"]["state"] == "cancelled" and calls(tmp_path, "sft") == 0


def test_uncommitted_code_is_refused_unless_allowed(compiled: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from runtime.launch import prepare

    dirty = {"repo": str(REPO), "commit": "c" * 40, "diff_sha256": "d" * 64, "dirty": True}
    monkeypatch.setattr(prepare, "git_provenance", lambda *a, **k: dirty)
    plan_path = write_plan(compiled, "dirty")
    refused = run_main(["launch", plan_path, "--runs", tmp_path])
    assert refused.code == 2 and "uncommitted changes" in refused.err and "--allow-dirty" in refused.err
    assert not (tmp_path / NAME).exists()
    dry = run_main(["launch", plan_path, "--runs", tmp_path, "--dry-run"])
    assert dry.code == 0 and "warning: " in dry.out


def test_slurm_dry_run_of_a_1000_node_plan_submits_arrays_not_thousands_of_jobs(tmp_path: Path) -> None:
    """olmo3-7b-think with a 4,096-proxy swarm on a 1,000-node cluster: one sbatch per job (19, the swarm's proxy
    evals an array too), not per task."""
    assert run_main(["compile", REPO / "recipes" / "olmo3-7b-think.yaml", "-o", tmp_path / "build",
                     "--set", "data.mix.swarm_size=4096", "--set", "cluster.max_nodes=1000"]).code == 0
    plan_file = tmp_path / "build" / "olmo3-7b-think" / "plan.json"
    plan = json.loads(plan_file.read_text())
    for job in plan["jobs"]:  # the dry run checks entries: stand-ins for the ones not implemented yet
        job["entry"] = "launch_entries:record"
    plan_file.write_text(json.dumps(plan))
    result = run_main(["launch", plan_file, "--runs", tmp_path / "runs", "--executor", "slurm", "--dry-run",
                       "--allow-dirty"])
    assert result.code == 0, result.err
    calls_ = [line for line in result.out.splitlines() if line.startswith("sbatch  ")]
    assert len(calls_) == len(plan["jobs"]) == 19
    assert f"slurm: 19 sbatch call(s) for {4096 * 2 + 17} task(s)" in result.out
    proxy_evals = next(line for line in calls_ if line.startswith("sbatch  mix-swarm-eval:"))
    assert "array of 4096 (at most " in proxy_evals and "afterok mix-swarm" in proxy_evals
    swarm = next(line for line in calls_ if line.startswith("sbatch  mix-swarm:"))
    assert "array of 4096 (at most " in swarm and "partition gpu" in swarm and "no dependency" in swarm
    pretrain = next(line for line in calls_ if line.startswith("sbatch  pretrain:"))
    assert "64 node(s) x 8 GPU(s), 8 task(s)/node" in pretrain and "afterok mix-solve" in pretrain
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("signame, exit_code, cause", [("SIGINT", 130, "Ctrl-C"), ("SIGTERM", 143, "SIGTERM"),
                                                       ("SIGHUP", 129, "SIGHUP")])
def test_a_signal_stops_a_local_launch_and_its_jobs_without_a_traceback(compiled: Path, tmp_path: Path, signame: str,
                                                                       exit_code: int, cause: str) -> None:
    """Ctrl-C, `kill` and a closed terminal all stop the jobs in flight; SIGTERM and SIGHUP used to end the
    launcher alone and leave its jobs running, orphaned."""
    import signal

    proc = start_launch(write_plan(compiled, "interrupt", {"pretrain": "launch_entries:slow"}), tmp_path,
                        stderr_apart=True)
    try:
        wait_until_running(proc, tmp_path, "pretrain", marker="started")
        task_group = int((Path(state(tmp_path)["pretrain"]["output_dir"]) / ".pgid.0").read_text())
        proc.send_signal(getattr(signal, signame))
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == exit_code and "Traceback" not in out + err, err
    assert f"recipe launch: interrupted by {cause}" in err
    jobs = state(tmp_path)
    assert jobs["pretrain"]["state"] == "failed" and jobs["pretrain"]["reason"] == f"interrupted ({cause})"
    assert jobs["midtrain"]["state"] == "cancelled"
    assert live_members(task_group) == [], "the job's processes outlived the launch"


def live_members(group: int, wait_s: float = 10.0) -> list[int]:
    """The processes of a process group that are neither gone nor zombies (an orphan killed with SIGKILL stays a
    zombie until init reaps it, which a container's init may never do), after waiting up to wait_s."""
    import time

    deadline = time.time() + wait_s
    while True:
        live = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == group and fields[0] != "Z":
                live.append(int(stat.parent.name))
        if not live or time.time() > deadline:
            return live
        time.sleep(0.1)


def test_a_task_stopped_before_it_wrote_its_process_group_is_still_killed(tmp_path: Path) -> None:
    """Ctrl-C just after a start: the task has no .pgid file yet, so the launcher finds it as the child of submitit's
    controller (left alone, it would run on orphaned, holding the launcher's output pipes open)."""
    import subprocess
    import sys
    import time
    from types import SimpleNamespace

    from runtime.launch.local import _Running, children_of

    controller = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time\n"
         "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
         "print(child.pid, flush=True)\ntime.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        task = int(controller.stdout.readline())
        assert children_of(controller.pid) == [task]
        running = _Running(SimpleNamespace(array=None), None, {"RECIPE_OUTPUT_DIR": str(tmp_path)}, tmp_path / "c.json")
        running.active = [(0, SimpleNamespace(_process=controller))]
        running.kill()
        assert controller.wait(timeout=10) == -9
        deadline = time.time() + 10
        while Path(f"/proc/{task}").exists() and "Z" not in Path(f"/proc/{task}/stat").read_text().split()[2]:
            assert time.time() < deadline, "the task outlived the kill"
            time.sleep(0.05)
        assert running.active == []
    finally:
        controller.kill()


def test_slurm_states_map_to_ours_and_a_job_is_its_worst_task() -> None:
    from runtime.launch.slurm import our_state, worst

    assert [our_state(s) for s in ("COMPLETED", "CANCELLED by 0", "PREEMPTED", "REQUEUED", "TIMEOUT", "UNKNOWN",
                                    "COMPLETING")] == ["done", "cancelled", "pending", "pending", "failed", "pending",
                                                       "running"]
    assert worst(["done", "done"]) == "done" and worst(["done", "running"]) == "running"
    assert worst(["running", "cancelled", "done"]) == "cancelled" and worst(["cancelled", "failed"]) == "failed"
