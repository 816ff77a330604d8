"""Fields shared by every training stage: optimisation, batch, duration, parallelism."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from spec.base import Fraction, NonNegativeInt, PositiveFloat, PositiveInt, Spec


class Schedule(Spec):
    """Learning-rate schedule after a linear warmup."""

    kind: Literal["cosine", "wsd", "linear", "constant"] = Field(
        "cosine", description="Decay shape: cosine, warmup-stable-decay, linear, or constant."
    )
    warmup_steps: NonNegativeInt = Field(0, description="Linear warmup steps.")
    min_lr_ratio: Fraction = Field(0.1, description="Final learning rate as a fraction of the peak.")
    decay_fraction: Fraction = Field(0.1, description="wsd only: fraction of steps spent decaying.")


class Optimizer(Spec):
    """AdamW."""

    kind: Literal["adamw"] = Field("adamw", description="Optimizer.")
    betas: tuple[Fraction, Fraction] = Field((0.9, 0.95), description="Adam beta1, beta2.")
    eps: PositiveFloat = Field(1e-8, description="Adam epsilon.")
    weight_decay: Annotated[float, Field(ge=0)] = Field(0.1, description="Decoupled weight decay.")


class Parallelism(Spec):
    """Degrees of parallelism; any left out are resolved from the stage's GPUs."""

    fsdp: PositiveInt | None = Field(None, description="FSDP (sharded data-parallel) degree.")
    dp_replicate: PositiveInt | None = Field(None, description="Replicated data-parallel degree (HSDP).")
    tp: PositiveInt | None = Field(None, description="Tensor-parallel degree.")
    pp: PositiveInt | None = Field(None, description="Pipeline-parallel degree.")
    cp: PositiveInt | None = Field(None, description="Context-parallel degree.")


class Resources(Spec):
    """What a stage's training job asks the cluster for."""

    nodes: PositiveInt = Field(1, description="Nodes.")
    gpus_per_node: Annotated[int, Field(ge=0)] | None = Field(
        None, description="GPUs per node; default the cluster's (0 on a CPU-only local machine)."
    )
    processes: PositiveInt | None = Field(
        None, description="Training processes when there are no GPUs (CPU data parallel); default 1."
    )
    time_limit: str | None = Field(
        None,
        pattern=r"^(\d+-)?\d{1,3}:\d{2}:\d{2}$",
        description="Slurm time limit [D-]HH:MM:SS; default the estimate plus 25%, within the cluster's limit.",
    )


class TrainingFields(Spec):
    """Optimisation and scale of one training stage."""

    resources: Resources = Field(default_factory=Resources, description="Cluster resources for the trainer.")
    lr: PositiveFloat = Field(description="Peak learning rate.")
    schedule: Schedule = Field(default_factory=Schedule, description="Learning-rate schedule.")
    optimizer: Optimizer = Field(default_factory=Optimizer, description="Optimizer settings.")
    global_batch_sequences: PositiveInt | None = Field(
        None, description="Sequences per optimizer step (give this or global_batch_tokens)."
    )
    global_batch_tokens: PositiveInt | None = Field(
        None, description="Tokens per optimizer step; must be a multiple of seq_len."
    )
    micro_batch_size: PositiveInt = Field(1, description="Sequences per GPU per forward/backward pass.")
    seq_len: PositiveInt | None = Field(None, description="Training sequence length; default the model's max.")
    steps: PositiveInt | None = Field(None, description="Optimizer steps (give this or tokens).")
    tokens: PositiveInt | None = Field(None, description="Training tokens (give this or steps).")
    grad_clip: PositiveFloat | None = Field(1.0, description="Gradient-norm clip; null for none.")
    checkpoint_every: PositiveInt = Field(1000, description="Steps between checkpoints.")
    parallelism: Parallelism = Field(default_factory=Parallelism, description="Parallelism degrees.")
    activation_checkpointing: Literal["none", "selective", "full"] = Field(
        "none", description="Recompute activations in the backward pass to save memory."
    )
    seed: int = Field(0, description="Random seed.")

    @model_validator(mode="after")
    def _one_of_each(self) -> "TrainingFields":
        if self.global_batch_sequences is not None and self.global_batch_tokens is not None:
            raise ValueError("give global_batch_sequences or global_batch_tokens, not both")
        if self.steps is not None and self.tokens is not None:
            raise ValueError("give steps or tokens, not both")
        return self
