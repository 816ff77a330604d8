"""The swarm's array task: train proxy i on mixture i with the runtime trainer (`runtime.train.run_lm`).

Entry `runtime.regmix:run_proxy` (kind `regmix_swarm`, an array job; RECIPE_ARRAY_INDEX = i). Task i:

1. draws the whole swarm from the seed (`runtime.regmix.sampling`) and takes mixture i, writes `swarm.json`
   (sources, token counts, sampling, bounds, every mixture: what the fit and `recipe report` read; every task
   writes the same bytes) and `proxy-<i:05d>/mix.json` = {"index": i, "weights": {...}};
2. trains the proxy as an ordinary pretraining job (`proxy_job`: the proxy model, fixed weights = mixture i,
   tokens, seq_len, batch, lr, the recipe's tokenizer, random init from the swarm's seed: every proxy starts from
   the same weights, so the swarm's differences are the mixture's) into `proxy-<i:05d>/`, with its HF export in
   `proxy-<i:05d>/hf` (what the eval job `mix-swarm-eval` reads) and its own DONE.json: a rerun of the array skips
   finished proxies. The held-out eval is left to `mix-swarm-eval`; the proxy's checkpoints are removed once it
   is done (the export is what the swarm's consumers read).

CPU proxies train on one thread unless OMP_NUM_THREADS says otherwise: a proxy's matrices are too small for a
second thread to pay (on a busy 2-core machine a 100k-token proxy took 20 s single-threaded and 60 s with two);
run two proxies at a time instead.

Proxy training settings the recipe does not name: AdamW (0.9, 0.95, eps 1e-8, weight decay 0.1), grad clip 1,
cosine schedule to 10% with a 10% warmup; steps = ceil(tokens / (global_batch_sequences × seq_len)).

Run one task by hand: `RECIPE_ARRAY_INDEX=3 RECIPE_OUTPUT_DIR=/tmp/swarm python -m runtime.run_job --config
build/<name>/jobs/mix-swarm/config.json --entry runtime.regmix:run_proxy`.
"""
from __future__ import annotations

import math
import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

SWARM_FILE = "swarm.json"
MIX_FILE = "mix.json"
PROXY_GRAD_CLIP = 1.0
PROXY_OPTIMIZER: dict[str, Any] = {"kind": "adamw", "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1}
PROXY_WARMUP_FRACTION, PROXY_MIN_LR_RATIO = 0.1, 0.1


def proxy_dir_name(index: int) -> str:
    return f"proxy-{index:05d}"


def array_index(job: Mapping[str, Any]) -> int:
    """This task's index: RECIPE_ARRAY_INDEX (RECIPE_TASK_INDEX as a fallback); checked against the swarm size."""
    raw = os.environ.get("RECIPE_ARRAY_INDEX") or os.environ.get("RECIPE_TASK_INDEX")
    if raw is None:
        raise RuntimeError(f"job {job['id']}: a swarm task needs RECIPE_ARRAY_INDEX (recipe launch sets it)")
    index = int(raw)
    size = int(job["config"]["swarm_size"])
    if not 0 <= index < size:
        raise ValueError(f"job {job['id']}: RECIPE_ARRAY_INDEX {index} outside the swarm (size {size})")
    return index


def swarm_weights(config: Mapping[str, Any]) -> tuple[tuple[str, ...], Any]:
    """(sources, (swarm_size, K) weights) of the swarm config: the same on every task."""
    from runtime.regmix.sampling import Sampler, rng_for

    sampler = Sampler.from_config(config["sources"], config["sampling"], config.get("bounds"))
    return sampler.sources, sampler.sample(int(config["swarm_size"]), rng_for(int(config["seed"]), "swarm"))


def swarm_record(config: Mapping[str, Any], sources: tuple[str, ...], weights: Any) -> dict[str, Any]:
    """swarm.json: what the fit and the solve need to know about the swarm."""
    from runtime.regmix.sampling import mixtures_as_dicts, natural_weights

    tokens = {name: int(config["sources"][name]["tokens"]) for name in sources}
    return {"sources": list(sources), "tokens": tokens, "natural": natural_weights(tokens),
            "sampling": dict(config["sampling"]), "bounds": dict(config.get("bounds") or {}),
            "seed": int(config["seed"]), "swarm_size": int(config["swarm_size"]),
            "objective": list(config.get("objective") or []),
            "mixtures": mixtures_as_dicts(sources, weights)}


def proxy_job(job: Mapping[str, Any], index: int, weights: Mapping[str, float]) -> dict[str, Any]:
    """The pretraining job dict `runtime.train.run_lm` trains proxy `index` from."""
    config = job["config"]
    proxy = config["proxy"]
    seq_len, batch = int(proxy["seq_len"]), int(proxy["global_batch_sequences"])
    micro = int(proxy.get("micro_batch_size") or batch)
    steps = max(1, math.ceil(int(proxy["tokens"]) / (batch * seq_len)))
    return {
        "id": f"{job['id']}.{proxy_dir_name(index)}", "kind": "pretrain", "stage": job.get("stage", "data.mix"),
        "hash": job["hash"], "recipe": job.get("recipe", "recipe"), "recipe_dir": job.get("recipe_dir", "."),
        "config": {
            "stage": "mix-swarm", "kind": "pretrain", "model": dict(proxy["model"]), "init": {"kind": "random"},
            "optim": {"lr": float(proxy["lr"]), "grad_clip": PROXY_GRAD_CLIP, "optimizer": dict(PROXY_OPTIMIZER),
                      "schedule": {"kind": "cosine", "min_lr_ratio": PROXY_MIN_LR_RATIO,
                                   "warmup_steps": max(1, round(PROXY_WARMUP_FRACTION * steps))}},
            "scale": {"seq_len": seq_len, "global_batch_sequences": batch, "micro_batch_size": micro,
                      "grad_accum": batch // micro, "steps": steps, "tokens": steps * batch * seq_len,
                      "processes": 1, "device": "cuda" if int(proxy.get("gpus", 0)) else "cpu",
                      "parallelism": {"fsdp": 1, "tp": 1, "pp": 1, "cp": 1, "dp_replicate": 1}},
            "data": {"sources": dict(config["sources"]), "weights": dict(weights)},
            "tokenizer": config["tokenizer"], "checkpoint_every": steps, "seed": int(config["seed"]),
            "activation_checkpointing": "none",
        },
    }


@contextmanager
def _output_dir(path: Path) -> Iterator[None]:
    """Point `runtime.outputs.output_dir` (RECIPE_OUTPUT_DIR) at one proxy's folder while it trains."""
    old = os.environ.get("RECIPE_OUTPUT_DIR")
    os.environ["RECIPE_OUTPUT_DIR"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("RECIPE_OUTPUT_DIR", None)
        else:
            os.environ["RECIPE_OUTPUT_DIR"] = old


def run_proxy(job: dict[str, Any]) -> None:
    """Array task i of the swarm: mixture i, its proxy trained and exported into `proxy-<i:05d>/`."""
    from runtime.outputs import atomic_write_json, output_dir, read_done
    from runtime.train import run_lm

    index = array_index(job)
    if not int(job["config"]["proxy"].get("gpus", 0)) and "torch" not in sys.modules:
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # see the module docstring: CPU proxies train single-threaded
    out = output_dir(job)
    folder = out / proxy_dir_name(index)
    if read_done(folder) is not None:
        print(f"{job['id']}[{index}]: already done ({folder / 'DONE.json'})")
        return
    started = time.time()
    sources, weights = swarm_weights(job["config"])
    atomic_write_json(out / SWARM_FILE, swarm_record(job["config"], sources, weights))
    mixture = {name: float(w) for name, w in zip(sources, weights[index])}
    atomic_write_json(folder / MIX_FILE, {"index": index, "weights": mixture})
    print(f"{job['id']}[{index}]: mixture " + ", ".join(f"{k} {v:.3f}" for k, v in mixture.items()), flush=True)
    with _output_dir(folder):
        run_lm(proxy_job(job, index, mixture), evaluate=False)
    shutil.rmtree(folder / "checkpoint", ignore_errors=True)
    print(f"{job['id']}[{index}]: done in {time.time() - started:.1f} s", flush=True)
