"""Build torchtitan 0.3.0's `Trainer.Config` (our `RecipeTrainer.Config`) from a compiled language-model job.

    from runtime.titan_config import build_trainer_config
    config = build_trainer_config(job, out_dir, init_hf_path=None)
    trainer = config.build()          # RecipeTrainer; trainer.train()

It is also a torchtitan config module: `recipe_job` is a config-registry function, so torchtitan's own
`ConfigManager().parse_args(["--module", "runtime.titan_config", "--config", "recipe_job", "--training.steps",
"7"])` reads the job named by `$RECIPE_JOB_CONFIG` and applies CLI overrides on top (tested). Running it through
`python -m torchtitan.train` works on GPUs; on CPU that entry lacks `runtime.cpu_compat` and our held-out eval,
HF export and DONE marker: use `runtime.train:run_lm`.

| job config                          | torchtitan                                                              |
|-------------------------------------|-------------------------------------------------------------------------|
| model                               | `model_spec` from `runtime.model_factory.build_model_spec`               |
| optim.lr, optimizer betas/eps/wd    | one catch-all AdamW `ParamGroupConfig` (foreach on CPU, fused on GPU)    |
| optim.schedule warmup + kind        | `LRSchedulersContainer.Config`: cosine/linear decay after warmup; wsd:   |
|                                     | `decay_ratio=decay_fraction` (linear); constant: min_lr_factor 1;        |
|                                     | `min_lr_factor=min_lr_ratio`                                              |
| optim.grad_clip                     | `training.max_norm`                                                       |
| scale.micro_batch_size / global     | `training.local_batch_size` / `training.global_batch_size` (grad accum = |
|                                     | global / (micro × data-parallel ranks), computed by the Trainer)         |
| scale.seq_len, steps                | `training.seq_len`, `training.steps`                                      |
| scale.parallelism                   | `parallelism` (fsdp -> data_parallel_shard_degree, tp, pp, cp, dp_rep.)  |
| checkpoint_every                    | `checkpoint.interval` (DCP under OUT/checkpoint, keep the latest 2)      |
| seed                                | `debug.seed`, the mixture's seed, and on CPU the model init (`init_seed`:|
|                                     | the same weights for any process count)                                  |
| activation_checkpointing            | none / selective / full                                                   |
| data, tokenizer                     | `runtime.lm_data.MixtureDataLoader.Config`, `hf_assets_path`             |

On CPU: fp32, no CUDA graphs, gloo (`runtime.cpu_compat`), `DenseMaskAttention` (from the model factory).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torchtitan.components.checkpoint import CheckpointManager
from torchtitan.components.loss import CrossEntropyLoss
from torchtitan.components.metrics import MetricsProcessor
from torchtitan.components.optimizer import LRSchedulersContainer, OptimizersContainer
from torchtitan.components.optimizer.optimizer import ParamGroupConfig
from torchtitan.config import ParallelismConfig, TrainingConfig
from torchtitan.config.configs import CommConfig, DebugConfig
from torchtitan.distributed.activation_checkpoint import FullAC, SelectiveAC

from runtime.lm_data import MixtureDataLoader, resolve_path, resolve_sources, resolve_weights
from runtime.lm_trainer import RecipeTrainer
from runtime.model_factory import build_model_spec
from runtime.outputs import output_dir
from spec.model import ModelSpec

CHECKPOINT_FOLDER = "checkpoint"


def model_spec_of(job: Mapping[str, Any]) -> ModelSpec:
    return ModelSpec(**job["config"]["model"])


def lr_scheduler_config(optim: Mapping[str, Any]) -> LRSchedulersContainer.Config:
    schedule = optim["schedule"]
    kind = schedule["kind"]
    common = dict(warmup_steps=int(schedule.get("warmup_steps", 0)),
                  min_lr_factor=float(schedule.get("min_lr_ratio", 0.0)))
    if kind == "cosine":
        return LRSchedulersContainer.Config(decay_ratio=None, decay_type="cosine", **common)
    if kind == "linear":
        return LRSchedulersContainer.Config(decay_ratio=None, decay_type="linear", **common)
    if kind == "wsd":
        return LRSchedulersContainer.Config(decay_ratio=float(schedule.get("decay_fraction", 0.1)),
                                            decay_type="linear", **common)
    if kind == "constant":  # a "decay" to 1.0 (decay_ratio=0 trips torchtitan's decay_steps != 0 assert past the end)
        return LRSchedulersContainer.Config(decay_ratio=None, decay_type="linear",
                                            warmup_steps=common["warmup_steps"], min_lr_factor=1.0)
    raise NotImplementedError(f"optim.schedule.kind {kind!r}: not supported (cosine, linear, wsd, constant)")


def optimizer_config(optim: Mapping[str, Any], *, cuda: bool) -> OptimizersContainer.Config:
    opt = optim["optimizer"]
    if opt.get("kind", "adamw") != "adamw":
        raise NotImplementedError(f"optim.optimizer.kind {opt['kind']!r}: only adamw is supported")
    kwargs = {"lr": float(optim["lr"]), "betas": tuple(opt.get("betas", (0.9, 0.95))),
              "eps": float(opt.get("eps", 1e-8)), "weight_decay": float(opt.get("weight_decay", 0.0))}
    return OptimizersContainer.Config(
        param_groups=[ParamGroupConfig(pattern=r".*", optimizer_name="AdamW", optimizer_kwargs=kwargs)],
        implementation="fused" if cuda else "foreach")


def parallelism_config(scale: Mapping[str, Any]) -> ParallelismConfig:
    p = scale.get("parallelism") or {}
    return ParallelismConfig(
        data_parallel_replicate_degree=int(p.get("dp_replicate", 1)),
        data_parallel_shard_degree=int(p.get("fsdp", -1)) if int(p.get("fsdp", 1)) > 1 else -1,
        tensor_parallel_degree=int(p.get("tp", 1)),
        pipeline_parallel_degree=int(p.get("pp", 1)),
        context_parallel_degree=int(p.get("cp", 1)),
    )


def activation_checkpoint_config(kind: str | None) -> Any:
    if kind in (None, "none"):
        return None
    if kind == "full":
        return FullAC.Config()
    return SelectiveAC.Config()


def build_trainer_config(job: Mapping[str, Any], out_dir: str | Path, *, init_hf_path: str | Path | None = None,
                         weights: Mapping[str, float] | None = None, dataloader: Any = None,
                         config_class: type[RecipeTrainer.Config] = RecipeTrainer.Config,
                         **trainer_fields: Any) -> RecipeTrainer.Config:
    """The Trainer config for an LM job writing into `out_dir` (weights: the mixture; default from the job;
    dataloader: another dataloader config, e.g. `runtime.sft_data.SFTDataLoader.Config`, instead of the mixture;
    config_class and trainer_fields: a RecipeTrainer subclass's config and its own fields, e.g. DPO's beta)."""
    cfg = job["config"]
    scale, optim = cfg["scale"], cfg["optim"]
    cuda = torch.cuda.is_available()
    spec = model_spec_of(job)
    if int(scale["seq_len"]) > spec.max_seq_len:
        raise ValueError(f"job {job['id']}: scale.seq_len {scale['seq_len']} > model.max_seq_len {spec.max_seq_len}")
    model_spec = build_model_spec(spec, name=job["id"])
    out = Path(out_dir)
    steps = int(scale["steps"])
    return config_class(
        model_spec=model_spec,
        hf_assets_path=resolve_path(job, cfg["tokenizer"]),
        dump_folder=str(out),
        loss=CrossEntropyLoss.Config(global_vocab_size=spec.vocab_size),
        optimizer=optimizer_config(optim, cuda=cuda),
        lr_scheduler=lr_scheduler_config(optim),
        training=TrainingConfig(
            local_batch_size=int(scale["micro_batch_size"]),
            global_batch_size=int(scale["global_batch_sequences"]),
            seq_len=int(scale["seq_len"]),
            steps=steps,
            max_norm=float(optim.get("grad_clip") or 1e9),
            dtype="float32",
            mixed_precision_param="bfloat16" if cuda else "float32",
            disable_cuda_graphs=True,
        ),
        parallelism=parallelism_config(scale),
        dataloader=dataloader or MixtureDataLoader.Config(
            sources=resolve_sources(job), weights=dict(weights if weights is not None else resolve_weights(job)),
            seed=int(cfg.get("seed", 0))),
        metrics=MetricsProcessor.Config(log_freq=1),
        checkpoint=CheckpointManager.Config(
            enable=True, folder=CHECKPOINT_FOLDER, interval=max(1, int(cfg.get("checkpoint_every") or steps)),
            keep_latest_k=2, last_save_model_only=False),
        activation_checkpoint=activation_checkpoint_config(cfg.get("activation_checkpointing")),
        debug=DebugConfig(seed=int(cfg.get("seed", 0))),
        comm=CommConfig(trace_buf_size=0),
        init_hf_path=str(init_hf_path) if init_hf_path else None,
        init_seed=None if cuda else int(cfg.get("seed", 0)),
        metrics_path=str(out / "metrics.jsonl"),
        **trainer_fields,
    )


def recipe_job() -> RecipeTrainer.Config:
    """torchtitan config-registry function: the job named by `$RECIPE_JOB_CONFIG` (a compiled config.json)."""
    job = json.loads(Path(os.environ["RECIPE_JOB_CONFIG"]).read_text(encoding="utf-8"))
    return build_trainer_config(job, output_dir(job))
