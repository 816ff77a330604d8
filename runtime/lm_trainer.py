"""`RecipeTrainer`: torchtitan 0.3.0's `Trainer`, plus what a recipe job needs around the stock training loop.

The training loop, gradient accumulation, clipping, optimizer/LR scheduler, DCP checkpoints (save every N steps,
resume from the latest at `train()` start) and metrics are torchtitan's own. This subclass adds:

- `Config.init_hf_path`: start from a Hugging Face folder (`model.safetensors` with HF names, e.g. the previous
  stage's `hf/` export), loaded through the family's torchtitan state-dict adapter before training; a checkpoint
  of this job, when there is one, still wins (torchtitan loads it at the start of `train()`).
- `Config.init_seed`: when set (CPU runs), the random init is the one `runtime.model_factory.build_model(spec,
  seed)` gives: built unsharded on CPU under that seed and loaded into the (possibly FSDP-sharded) model, so
  1 and N processes start from the same weights (torchtitan's own init of sharded DTensors on a CPU mesh draws
  different numbers per layout). Left unset on GPUs, where building the full model on every rank costs too much.
- `Config.metrics_path`: every metrics line torchtitan logs is also appended to metrics.jsonl (rank 0) as
  `{"step", "loss", "lr", "tokens_per_s", "grad_norm", "n_tokens_seen", ...}`, plus what `step_metrics()` (a
  subclass hook, e.g. DPO's reward accuracy) returns.
- `evaluate(sources)`: per-source held-out loss / bits-per-byte (`runtime.lm_eval`).
- `export_hf(out_dir, spec)`: gathers the full weights (collective) and writes the HF folder on rank 0.

Built from a job by `runtime.titan_config.build_trainer_config`; run by `runtime.train.run_lm`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict
from torchtitan.trainer import Trainer

from runtime.outputs import MetricsWriter


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


class RecipeTrainer(Trainer):
    @dataclass(kw_only=True, slots=True)
    class Config(Trainer.Config):
        init_hf_path: str | None = None
        """Folder with model.safetensors (HF names) to start from; None: torchtitan's random init."""
        metrics_path: str | None = None
        """metrics.jsonl to append training metrics to (rank 0)."""
        init_seed: int | None = None
        """Random init independent of the sharding (see the module docstring); None: torchtitan's init."""

    def __init__(self, config: Config):
        super().__init__(config)
        self.metrics_writer = MetricsWriter(config.metrics_path) if config.metrics_path and _rank() == 0 else None
        self.last_metrics: dict[str, Any] = {}
        container = self.metrics_processor.logger
        original_log = container.log

        def log(metrics: dict[str, Any], step: int) -> None:
            original_log(metrics, step)
            self._record(metrics, step)

        container.log = log  # type: ignore[method-assign]
        if config.init_hf_path:
            self.load_hf(config.init_hf_path)
        elif config.init_seed is not None:
            self.load_full_state(self.reference_init(config.init_seed))

    def _record(self, metrics: Mapping[str, Any], step: int) -> None:
        lr = next((float(v) for k, v in metrics.items() if k.startswith("lr/")), None)
        record: dict[str, Any] = {"step": step}
        names = {"loss_metrics/global_avg_loss": "loss", "grad_norm": "grad_norm", "throughput(tps)": "tokens_per_s",
                 "n_tokens_seen": "n_tokens_seen", "validation_metrics/loss": "val_loss"}
        for key, name in names.items():
            if key in metrics:
                record[name] = metrics[key]
        if lr is not None:
            record["lr"] = lr
        self.last_metrics = record

    def step_metrics(self) -> dict[str, Any]:
        """A subclass's own metrics of the step that just ran (called on every rank: may be collective)."""
        return {}

    def train_step(self, data_iterator: Any) -> None:
        self.last_metrics = {}
        super().train_step(data_iterator)
        extra = self.step_metrics()
        if self.last_metrics:  # torchtitan logged this step (rank 0)
            self.last_metrics.update(extra)
            if self.metrics_writer is not None:
                self.metrics_writer.write(self.last_metrics)

    def load_hf(self, folder: str | Path) -> None:
        """Load HF-named weights (every rank reads the file) into the possibly sharded model."""
        self.load_full_state(self.hf_full_state(folder))

    def hf_full_state(self, folder: str | Path) -> dict[str, torch.Tensor]:
        """The unsharded weights of a Hugging Face folder under the model's own names (read by this rank alone)."""
        from safetensors.torch import load_file

        path = Path(folder) / "model.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"init: {path} not found")
        adapter_cls = self.config.model_spec.state_dict_adapter
        if adapter_cls is None:
            raise NotImplementedError(f"init from a Hugging Face folder: no state-dict adapter for "
                                      f"{self.config.model_spec.name}")
        adapter = adapter_cls(self.model_config, None)
        return dict(adapter.from_hf({k: v.float() for k, v in load_file(str(path)).items()}))

    def load_full_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load unsharded weights into the (possibly sharded) model."""
        set_model_state_dict(self.model_parts[0], state, options=StateDictOptions(full_state_dict=True, strict=True))

    def reference_init(self, seed: int) -> dict[str, torch.Tensor]:
        """The weights `build_model(spec, seed=seed)` gives: built unsharded on CPU, torchtitan's init_states."""
        with torch.device("meta"):
            model = self.model_config.build()
        model.to_empty(device="cpu")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model.init_states(buffer_device=torch.device("cpu"))
        return model.state_dict()

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The whole model's weights on CPU (collective under FSDP: every rank must call it)."""
        return get_model_state_dict(self.model_parts[0],
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def evaluate(self, sources: Mapping[str, list[str]], *, batch_size: int = 8) -> dict[str, dict[str, float]]:
        from runtime.lm_eval import evaluate_texts

        return {name: evaluate_texts(self.model_parts[0], self.tokenizer, texts, self.config.training.seq_len,
                                     batch_size=batch_size, device=self.device)
                for name, texts in sorted(sources.items())}

    def close(self) -> None:
        super().close()
        if self.metrics_writer is not None:
            self.metrics_writer.close()
