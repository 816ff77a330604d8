"""The plan's `rlvr_trainer` job: `runtime.rl:run_trainer(job)`.

    python -m runtime.run_job --config build/<name>/jobs/rlvr/config.json --entry runtime.rl:run_trainer

- The sidecar: its output folder from `RECIPE_PEER_<ROLLOUT_JOB>` (the launcher sets it for the members of an RL
  group); the trainer waits (up to 10 minutes) for its server.json, and tells it to stop (`rollout.stop`) when
  training ends, fails or is cancelled (and, as a backstop, its DONE.json does too).
- The init model: `init` as every trainer job (`RECIPE_INPUT_<JOB>/hf` for `{"kind": "stage"}`); the sidecar serves
  the same weights as version 0.
- Processes: `scale.processes` > 1 runs the trainer under torchrun (`runtime.train`); rank 0 talks to the sidecar
  and broadcasts each batch, every rank trains on its share (runtime/rl/trainer.py).
- The prompts: `prompts` ({path|hf, split, text_field}) in the chat format SFT trained on; the rewards: `rl.rewards`
  through `runtime.rewards.Rewards`, or coin flips (`RandomRewards`, seeded by the job's seed) for the
  `random_reward` control (`rl.reward_mode`).
- Outputs (`runtime.train._train_job`, shared with every trainer job): metrics.jsonl (one line per RL step, see
  `runtime.rl.trainer.RLStats`), checkpoint/ (resume), rollout-weights/ (the pushes), hf/, and DONE.json with
  `eval.arith_exact_match` (the 500 held-out toy arithmetic questions, greedy, chat format, answered by the sidecar
  serving the final weights) after RL beside `eval.arith_exact_match_before` (the same, at the first start:
  held-out-before.json), the gain, and `eval.rl` (steps, samples dropped, sidecar restarts, idle fractions).
"""
from __future__ import annotations

import json
from typing import Any

from runtime.toyworld.settings import EVAL_DOCS

# The gain RL is judged by: all of the toy world's held-out arithmetic (500 questions, one standard error about 2
# points); 32 questions (the other jobs' check) move 3 points per answer. The sidecar answers them in seconds.
RL_EVAL_QUESTIONS = EVAL_DOCS


def run_trainer(job: dict[str, Any]) -> None:
    if job["kind"] != "rlvr_trainer":
        raise ValueError(f"run_trainer runs rlvr_trainer jobs, not {job['kind']!r}")
    cfg = job["config"]
    from runtime.answer_eval import toy_arith_rows
    from runtime.outputs import output_dir, read_done
    from runtime.rl.trainer import EVAL_BEFORE
    from runtime.rollout import control
    from runtime.rollout.sidecar import peer_dir
    from runtime.train import _train_job, data_paths, local_source

    out = output_dir(job)
    if read_done(out) is not None:
        print(f"{job['id']}: already done ({out / 'DONE.json'})")
        return
    rl = cfg["rl"]
    sidecar_dir = peer_dir(rl["rollout_job"], needed_by=f"job {job['id']}")
    (out / control.STOP).unlink(missing_ok=True)  # left by an earlier attempt of this job
    source = local_source(job, cfg["prompts"], "RL prompts")
    eval_rows = toy_arith_rows(data_paths(source), limit=RL_EVAL_QUESTIONS)

    def build_config(out_dir: Any, init: Any) -> Any:
        from runtime.rl.trainer import GRPOTrainer, PromptDataLoader
        from runtime.titan_config import build_trainer_config

        loader = PromptDataLoader.Config(source=source, seed=int(cfg.get("seed", 0)))
        return build_trainer_config(job, out_dir, init_hf_path=init, dataloader=loader,
                                    config_class=GRPOTrainer.Config, rl=rl, model_json=dict(cfg["model"]),
                                    sidecar_dir=str(sidecar_dir), eval_rows=eval_rows,
                                    reward_seed=int(cfg.get("seed", 0)))

    def evaluate(trainer: Any) -> dict[str, Any]:
        from torchtitan.tools.logging import logger

        evals: dict[str, Any] = {"rl": rl_summary(trainer)}
        if eval_rows:  # measured by the sidecar; by the trainer's model when training never reached the loop
            after = trainer.arith_after or trainer.exact_match()
            saved = out / EVAL_BEFORE
            before = trainer.arith_before or (json.loads(saved.read_text()) if saved.is_file() else after)
            evals.update(arith_exact_match=after, arith_exact_match_before=before,
                         arith_gain=after["accuracy"] - before["accuracy"])
            logger.info(f"{job['id']}: held-out arithmetic exact match {before['accuracy']:.3f} -> "
                        f"{after['accuracy']:.3f} ({after['n']} questions)")
        return evals

    reason = "the trainer failed"
    try:
        _train_job(job, build_config=build_config, evaluate=evaluate,
                   done={"prompts": source, "reward_mode": rl.get("reward_mode", "verifiers")})
        reason = "training finished"
    finally:
        control.request_stop(out, reason)


def rl_summary(trainer: Any) -> dict[str, Any]:
    """Whole-run figures of the RL loop (this process's part of it, after a resume)."""
    log = trainer.step_log
    loop = trainer.loop
    summary: dict[str, Any] = {"steps_run": len(log), "reward_mode": trainer.config.rl.get("reward_mode")}
    if log:
        summary.update(
            reward_first=log[0]["reward_mean"], reward_last=log[-1]["reward_mean"],
            reward_mean_last5=sum(m["reward_mean"] for m in log[-5:]) / len(log[-5:]),
            dropped_samples=sum(m["dropped_samples"] for m in log),
            zero_variance_groups=sum(m["zero_variance_groups"] for m in log),
            two_span_samples=sum(m["two_span_samples"] for m in log),
            seconds=sum(m["time_step_s"] for m in log))
    if loop is not None:
        summary.update(sidecar_restarts=loop.restarts, **trainer.loop_times)
    if trainer.prompt_filter is not None:
        summary["prompt_filter"] = trainer.prompt_filter
    return summary
