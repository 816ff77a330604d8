"""Model architecture: the `model` block of a recipe (and of a RegMix proxy)."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from spec.base import PositiveFloat, PositiveInt, Spec


class YarnScaling(Spec):
    """YaRN RoPE scaling (arXiv 2309.00071), as used for Olmo 3's 65k extension."""

    kind: Literal["yarn"] = Field(description="RoPE scaling method.")
    factor: PositiveFloat = Field(description="Context extension factor (new length / original length).")
    original_max_seq_len: PositiveInt = Field(description="Context length the model was trained at before scaling.")
    beta_fast: PositiveFloat = Field(32.0, description="YaRN high-frequency boundary (rotations).")
    beta_slow: PositiveFloat = Field(1.0, description="YaRN low-frequency boundary (rotations).")
    layers: Literal["all", "global"] = Field(
        "all", description="Apply to every layer, or only to full-attention (global) layers as Olmo 3 does."
    )


class Llama3Scaling(Spec):
    """Llama 3.1 frequency-dependent RoPE scaling."""

    kind: Literal["llama3"] = Field(description="RoPE scaling method.")
    factor: PositiveFloat = Field(description="Scaling factor for low frequencies.")
    original_max_seq_len: PositiveInt = Field(description="Context length of the original pretraining.")
    low_freq_factor: PositiveFloat = Field(1.0, description="Wavelength boundary for the low-frequency band.")
    high_freq_factor: PositiveFloat = Field(4.0, description="Wavelength boundary for the high-frequency band.")


RopeScaling = Annotated[YarnScaling | Llama3Scaling, Field(discriminator="kind")]


class SlidingWindow(Spec):
    """Sliding-window attention on some layers; the rest stay global (full attention)."""

    size: PositiveInt = Field(description="Window size in tokens.")
    global_every: PositiveInt | None = Field(
        4, description="Every Nth layer (the Nth, 2Nth, ...) keeps full attention; null for none."
    )
    global_last: bool = Field(True, description="The last layer keeps full attention.")
    global_layers: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=list, description="Further 0-based layer indices that keep full attention."
    )

    def is_global(self, layer: int, n_layers: int) -> bool:
        """Whether 0-based `layer` of `n_layers` uses full attention."""
        if self.global_every is not None and (layer + 1) % self.global_every == 0:
            return True
        return (self.global_last and layer == n_layers - 1) or layer in self.global_layers


class ModelSpec(Spec):
    """A decoder-only transformer: Llama 3, Qwen 3 or Olmo 3 style."""

    family: Literal["llama3", "qwen3", "olmo3"] = Field(
        description="Architecture family: block layout and norm placement (olmo3 normalises after attention/MLP)."
    )
    vocab_size: PositiveInt = Field(description="Tokenizer vocabulary size (embedding rows).")
    d_model: PositiveInt = Field(description="Hidden size.")
    n_layers: PositiveInt = Field(le=10_000, description="Number of transformer blocks (at most 10,000).")
    n_heads: PositiveInt = Field(description="Query heads per layer.")
    n_kv_heads: PositiveInt = Field(
        description="Key/value heads per layer: equal to n_heads for MHA, fewer for GQA, 1 for MQA."
    )
    head_dim: PositiveInt | None = Field(None, description="Per-head dimension; default d_model / n_heads.")
    ffn_hidden: PositiveInt = Field(description="Hidden size of the SwiGLU MLP.")
    qk_norm: Literal["none", "per_head", "full"] = Field(
        "none",
        description="RMSNorm on queries and keys: per head (Qwen 3) or over the full projection (Olmo 3).",
    )
    tie_embeddings: bool = Field(False, description="Share the input embedding with the output projection.")
    rope_theta: PositiveFloat = Field(500_000.0, description="RoPE base frequency.")
    rope_scaling: RopeScaling | None = Field(None, description="RoPE scaling: null (none), yarn or llama3.")
    sliding_window: SlidingWindow | None = Field(None, description="Sliding-window attention; null for none.")
    max_seq_len: PositiveInt = Field(description="Maximum context length the model is trained for.")
    norm_eps: PositiveFloat = Field(1e-5, description="RMSNorm epsilon.")
    dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="Compute and export dtype (master weights and optimizer states stay float32)."
    )

    @model_validator(mode="after")
    def _head_dim_divides(self) -> "ModelSpec":
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) is not divisible by n_heads ({self.n_heads}): set head_dim explicitly"
            )
        return self

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads

    def global_layer_count(self) -> int:
        if self.sliding_window is None:
            return self.n_layers
        return sum(self.sliding_window.is_global(i, self.n_layers) for i in range(self.n_layers))
