"""Training jobs (pretrain, midtrain, long_context, sft, dpo) through torchtitan's Trainer.

Entries for the plan: `runtime.train:run_lm` (LM stages), `runtime.train:run_sft` (supervised fine-tuning:
`runtime.sft_data`) and `runtime.train:run_dpo` (`runtime.dpo`); all share the trainer, init, outputs and DONE
marker:

    python -m runtime.run_job --config build/<name>/jobs/<id>/config.json --entry runtime.train:run_lm

`run_lm(job)`: job = the parsed config.json. Writes into `runtime.outputs.output_dir(job)` ($RECIPE_OUTPUT_DIR, else
runs/<recipe>/<id>-<hash12>/): metrics.jsonl, checkpoint/step-N (DCP), hf/ (safetensors + config.json + tokenizer
files), and last, atomically, DONE.json (final loss, per-source held-out loss and bits-per-byte). A job whose
DONE.json exists returns at once; a job with checkpoints resumes from the latest (kill it and run it again).

Init: `{"kind": "random"}`; `{"kind": "stage", "job": ID}` loads ID's `hf/` export from `$RECIPE_INPUT_<ID>`;
`{"kind": "path", "path": DIR}` a Hugging Face folder (relative to the recipe). long_context uses its own model
block (new max_seq_len, RoPE scaling) with the parent's weights.

`scale.processes` N > 1: run_lm, when not already under torchrun, writes OUT/job.json and runs
`python -m torch.distributed.run --standalone --nproc_per_node N -m runtime.train --job OUT/job.json` (one process
group per job; FSDP over gloo on CPU, NCCL on GPUs) and waits for it. Under torchrun (WORLD_SIZE set) it trains in
place; WORLD_SIZE must equal the plan's process count.
Test: `python -m pytest tests/runtime/test_train.py -q` (`-m slow` adds the 2-process FSDP run).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from runtime.net import free_port

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
LM_KINDS = ("pretrain", "midtrain", "long_context")


def _processes(job: Mapping[str, Any]) -> int:
    return int(job["config"]["scale"].get("processes", 1))


def _under_torchrun(job: Mapping[str, Any]) -> bool:
    if "WORLD_SIZE" not in os.environ:
        return False
    if int(os.environ["WORLD_SIZE"]) != _processes(job):
        raise RuntimeError(f"job {job['id']}: plan says {_processes(job)} processes, launched with "
                           f"WORLD_SIZE={os.environ['WORLD_SIZE']}")
    return True


def _run_with_torchrun(job: Mapping[str, Any], out: Path) -> None:
    """Run this job in `scale.processes` processes under torchrun (this process waits)."""
    from runtime.outputs import atomic_write_json

    out.mkdir(parents=True, exist_ok=True)
    job_file = atomic_write_json(out / "job.json", job)
    n = _processes(job)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
           "-m", "runtime.train", "--job", str(job_file)]
    env = {**os.environ, "RECIPE_OUTPUT_DIR": str(out)}
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or n) // n)))
    result = subprocess.run(cmd, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"job {job['id']}: torchrun with {n} processes failed (exit {result.returncode})")


def _single_process_env() -> None:
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))


def init_hf_folder(job: Mapping[str, Any]) -> Path | None:
    """The Hugging Face folder to start from, or None for a random init."""
    from runtime.lm_data import resolve_path
    from runtime.outputs import input_dir

    init = job["config"].get("init") or {"kind": "random"}
    kind = init.get("kind", "random")
    if kind == "random":
        return None
    if kind == "stage":
        folder = input_dir(init["job"], needed_by=f"job {job['id']} (init from stage)") / "hf"
    elif kind == "path":
        folder = Path(resolve_path(job, init["path"]))
    else:
        raise NotImplementedError(f"job {job['id']}: init kind {kind!r} not supported (random, stage, path)")
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"job {job['id']}: init weights {folder}/model.safetensors not found")
    return folder


def held_out_texts(sources: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]]:
    """Each source's held-out documents (its `eval_split`, default "validation"); sources without one are skipped."""
    from runtime.lm_data import source_texts

    texts = {}
    for name, spec in sources.items():
        split = spec.get("eval_split") or ("validation" if spec.get("path") else None)
        if split is None:
            continue
        path = Path(spec["path"]) if spec.get("path") else None
        if path is not None and path.is_dir() and not (path / f"{split}.jsonl").is_file():
            print(f"warning: source {name}: no {split}.jsonl under {path}: not evaluated", file=sys.stderr)
            continue
        texts[name] = source_texts(spec, split)
    return texts


def _last_logged(out: Path) -> dict[str, Any]:
    from runtime.outputs import read_metrics

    return next((m for m in reversed(read_metrics(out / "metrics.jsonl")) if "loss" in m), {})


def _train_job(job: dict[str, Any], *, build_config: Any, evaluate: Any, done: Mapping[str, Any]) -> None:
    """What every trainer job shares: skip when DONE, init, torchrun or single-process setup, train (resuming from
    checkpoints), `evaluate(trainer)` (every rank), HF export, metrics line, DONE.json last.
    build_config(out, init_hf_path) -> RecipeTrainer.Config; done: extra DONE.json fields."""
    from runtime.cpu_compat import apply_cpu_compat  # imports torch: not at module import (launch resolves entries)

    apply_cpu_compat()
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from torchtitan.tools.logging import init_logger

    from runtime.hf_export import export_hf
    from runtime.model_factory import build_model
    from runtime.outputs import MetricsWriter, atomic_write_json, output_dir, read_done, write_done
    from runtime.titan_config import model_spec_of

    out = output_dir(job)
    if read_done(out) is not None:
        print(f"{job['id']}: already done ({out / 'DONE.json'})")
        return
    init = init_hf_folder(job)
    if not _under_torchrun(job):
        if _processes(job) > 1:
            _run_with_torchrun(job, out)
            if read_done(out) is None:
                raise RuntimeError(f"job {job['id']}: torchrun finished but {out / 'DONE.json'} is missing")
            return
        _single_process_env()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "job.json", job)
    init_logger()
    config = build_config(out, init)
    started = time.time()
    trainer = config.build()
    rank = torch.distributed.get_rank()
    try:
        trainer.train()
        train_s = time.time() - started
        final = dict(trainer.last_metrics) or _last_logged(out)  # nothing logged: resumed at the last step
        spec = model_spec_of(job)
        evals = evaluate(trainer)
        state = trainer.full_state_dict()
        if rank == 0:
            model = build_model(spec, device="cpu")
            model.load_state_dict(state)
            tokenizer = trainer.tokenizer
            hf = out / "hf"
            export_hf(model, spec, hf, extra_config={"bos_token_id": tokenizer.bos_id,
                                                     "eos_token_id": tokenizer.eos_id})
            for name in TOKENIZER_FILES:
                src = Path(config.hf_assets_path) / name
                if src.is_file():
                    shutil.copy2(src, hf / name)
            writer = MetricsWriter(out / "metrics.jsonl")
            writer.write({"step": trainer.step, "eval": evals})
            writer.close()
            write_done(out, {"job": job["id"], "kind": job["kind"], "hash": job["hash"], "step": trainer.step,
                             "final_loss": final.get("loss"), "final_metrics": final, "eval": evals, **done,
                             "train_seconds": round(train_s, 2), "hf": str(hf),
                             "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    finally:
        trainer.close()
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def run_lm(job: dict[str, Any], *, evaluate: bool = True) -> None:
    """Train one LM job to completion (or resume it), export it, evaluate it, mark it DONE.
    evaluate=False skips the held-out eval (RegMix proxies: their eval job evaluates them)."""
    if job["kind"] not in LM_KINDS:
        raise ValueError(f"run_lm runs {LM_KINDS}, not {job['kind']!r}")
    from runtime.lm_data import resolve_sources, resolve_weights
    from runtime.outputs import output_dir, read_done
    from runtime.titan_config import build_trainer_config

    if read_done(output_dir(job)) is not None:
        print(f"{job['id']}: already done ({output_dir(job) / 'DONE.json'})")
        return
    weights = resolve_weights(job)  # fails early and clearly when a producer's output is missing

    def held_out(trainer: Any) -> dict[str, Any]:
        from torchtitan.tools.logging import logger

        if not evaluate:
            return {}
        sources = resolve_sources(job)
        evals: dict[str, Any] = trainer.evaluate(held_out_texts(sources))
        logger.info(f"{job['id']}: held-out " + ", ".join(f"{k} loss {v['loss']:.3f} bpb {v['bpb']:.3f}"
                                                          for k, v in evals.items()))
        arith = answer_accuracy(trainer, [p for s in sources.values() for p in data_paths(s)], chat=False)
        return {**evals, **arith}

    _train_job(job, build_config=lambda out, init: build_trainer_config(job, out, init_hf_path=init, weights=weights),
               evaluate=held_out, done={"weights": weights})


def answer_accuracy(trainer: Any, data_paths: list[str], *, chat: bool) -> dict[str, Any]:
    """{"arith_exact_match": ...} on the toy world's held-out arithmetic when the job's data is the toy world."""
    from torchtitan.tools.logging import logger

    from runtime.answer_eval import exact_match, toy_arith_rows

    rows = toy_arith_rows(data_paths)
    if not rows:
        return {}
    result = exact_match(trainer.model_parts[0], trainer.tokenizer, rows, max_len=trainer.config.training.seq_len,
                         chat=chat, device=trainer.device)
    logger.info(f"held-out arithmetic exact match {result['accuracy']:.3f} ({result['n']} questions)")
    return {"arith_exact_match": result}


def local_source(job: Mapping[str, Any], data: Mapping[str, Any], what: str) -> dict[str, Any]:
    """A data reference of the job with its local path made absolute, or a producer job's file
    (`{"from_job", "file"}`: `$RECIPE_INPUT_<JOB>/<file>`)."""
    from runtime.lm_data import resolve_path
    from runtime.outputs import input_dir

    source = dict(data)
    if "from_job" in source:
        path = input_dir(source.pop("from_job"), needed_by=f"job {job['id']} ({what})") / source.pop("file")
        if not path.exists():
            raise FileNotFoundError(f"job {job['id']}: {what} {path} not found")
        source["path"] = str(path)
    elif source.get("path"):
        source["path"] = resolve_path(job, source["path"])
    return source


def validation_split(source: Mapping[str, Any]) -> dict[str, Any] | None:
    """The source's `validation` split when it is a local folder that has one, else None."""
    path = Path(source["path"]) if source.get("path") else None
    if path is not None and path.is_dir() and (path / "validation.jsonl").is_file():
        return {**source, "split": "validation"}
    return None


def data_paths(source: Mapping[str, Any], job: Mapping[str, Any] | None = None) -> list[str]:
    """Where the toy world's eval lookup (`runtime.answer_eval.toy_arith_rows`) looks: the source's local path, then
    the recipe's tokenizer folder (the data a job generated lives in its producer's output, not in the toy world)."""
    paths = [str(source["path"])] if source.get("path") else []
    tokenizer = (job or {}).get("config", {}).get("tokenizer")
    if tokenizer:
        from runtime.lm_data import resolve_path

        paths.append(resolve_path(job, tokenizer))  # type: ignore[arg-type]
    return paths


def run_sft(job: dict[str, Any]) -> None:
    """Supervised fine-tuning (`runtime.sft_data`: chat template, packed conversations, loss on the assistant's
    tokens only) through the same trainer; eval: held-out loss on the data's `validation` split (assistant tokens
    only) and greedy exact-match accuracy on the toy world's held-out arithmetic (`runtime.answer_eval`)."""
    if job["kind"] != "sft":
        raise ValueError(f"run_sft runs sft jobs, not {job['kind']!r}")
    from runtime.sft_data import SFTDataLoader
    from runtime.titan_config import build_trainer_config

    cfg = job["config"]
    source = local_source(job, cfg["data"], "SFT data")
    loader = SFTDataLoader.Config(source=source, seed=int(cfg.get("seed", 0)))

    def evaluate(trainer: Any) -> dict[str, Any]:
        from torchtitan.tools.logging import logger

        from runtime.sft_data import assistant_loss, load_conversations

        evals: dict[str, Any] = {}
        validation = validation_split(source)
        if validation is not None:
            evals["validation"] = assistant_loss(trainer.model_parts[0], trainer.tokenizer,
                                                 load_conversations(validation), trainer.config.training.seq_len,
                                                 device=trainer.device)
        evals.update(answer_accuracy(trainer, data_paths(source, job), chat=True))
        logger.info(f"{job['id']}: eval {json.dumps(evals)[:500]}")
        return evals

    _train_job(job, build_config=lambda out, init: build_trainer_config(job, out, init_hf_path=init,
                                                                        dataloader=loader),
               evaluate=evaluate, done={"data": source})


def run_dpo(job: dict[str, Any]) -> None:
    """DPO (`runtime.dpo`: sigmoid or length-normalised loss against the frozen `from` model, whose log-probs are
    computed once) through the same trainer; eval: reward accuracy and margin on the data's `validation` split
    (when there is one) and greedy exact-match accuracy on the toy world's held-out arithmetic."""
    if job["kind"] != "dpo":
        raise ValueError(f"run_dpo runs dpo jobs, not {job['kind']!r}")
    from runtime.dpo import DPODataLoader, DPOTrainer
    from runtime.titan_config import build_trainer_config

    cfg = job["config"]
    dpo = cfg["dpo"]
    if dpo.get("reference") != cfg.get("init"):
        raise NotImplementedError(f"job {job['id']}: a DPO reference other than the initial weights")
    if (cfg.get("init") or {}).get("kind", "random") == "random":
        raise ValueError(f"job {job['id']}: DPO needs a `from` model (the policy's start and the frozen reference)")
    source = local_source(job, cfg["data"], "preference pairs")
    loader = DPODataLoader.Config(source=source, seed=int(cfg.get("seed", 0)))

    def evaluate(trainer: Any) -> dict[str, Any]:
        from torchtitan.tools.logging import logger

        evals: dict[str, Any] = {}
        pairs = trainer.evaluate_held_out()
        if pairs is not None:
            evals["held_out_pairs"] = pairs
            logger.info(f"{job['id']}: held-out pairs reward accuracy {pairs['reward_accuracy']:.3f}, margin "
                        f"{pairs['reward_margin']:.4f} ({pairs['pairs']} pairs)")
        evals.update(answer_accuracy(trainer, data_paths(source, job), chat=True))
        return evals

    _train_job(job, build_config=lambda out, init: build_trainer_config(
        job, out, init_hf_path=init, dataloader=loader, config_class=DPOTrainer.Config, beta=float(dpo["beta"]),
        dpo_loss=dpo["loss"], held_out=validation_split(source)), evaluate=evaluate, done={"data": source, "dpo": dpo})


def _run_rl(job: dict[str, Any]) -> None:
    from runtime.rl.job import run_trainer

    run_trainer(job)


RUNNERS = {**{kind: run_lm for kind in LM_KINDS}, "sft": run_sft, "dpo": run_dpo, "rlvr_trainer": _run_rl}


def main(argv: list[str] | None = None) -> int:
    """`python -m runtime.train --job JOB.json`: run one training job (what torchrun starts in every process)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--job", required=True, type=Path)
    args = parser.parse_args(argv)
    job = json.loads(args.job.read_text(encoding="utf-8"))
    RUNNERS[job["kind"]](job)
    return 0


if __name__ == "__main__":
    sys.exit(main())
