"""Build torchtitan 0.3.0 models from a recipe's `model` block (`spec.model.ModelSpec`).

Use:

    from compiler.build import compile_recipe
    from runtime.model_factory import build_model
    spec = compile_recipe("recipes/tiny-think.yaml").recipe.model
    model = build_model(spec, device="cpu", seed=0)     # fp32 weights, initialised, deterministic in `seed`
    logits = model(tokens)                               # (batch, seq) int64 -> (batch, seq, vocab_size)

Test: `python -m pytest tests/runtime/test_model_factory.py -q` (needs the `runtime` extra: torch, torchtitan).

Everything is torchtitan's own model code; the recipe only chooses the pieces:

| recipe field         | torchtitan 0.3.0                                                                    |
|----------------------|-------------------------------------------------------------------------------------|
| family llama3        | `Llama3Model` + `Llama3TransformerBlock`, `ComplexRoPE`, llama3 registry's inits    |
| family qwen3         | `Qwen3Model` + `Qwen3TransformerBlock`, `CosSinRoPE`, qwen3 registry's inits        |
| family olmo3         | `Qwen3Model` + `Olmo3TransformerBlock` (below: norms after attention/MLP),          |
|                      | `CosSinRoPE`, qwen3 registry's inits (torchtitan has no Olmo model)                 |
| n_heads, n_kv_heads, head_dim | `make_gqa_config(dim, n_heads, n_kv_heads, head_dim, ...)` (GQA/MQA/MHA)    |
| ffn_hidden           | `make_ffn_config(hidden_dim=ffn_hidden)`: 0.3.0 takes the final SwiGLU width as is  |
|                      | (`compute_ffn_hidden_dim`'s multiplier/multiple_of rounding is not used)            |
| qk_norm per_head     | `make_gqa_config(qk_norm=RMSNorm.Config(head_dim))`: one RMSNorm(head_dim) for q, k |
| qk_norm full         | torchtitan has no such option: `ProjectionRMSNorm` (an RMSNorm over all heads) and  |
|                      | `RecipeAttention` (a GQAttention whose k norm can be wider/narrower than q's)       |
| tie_embeddings       | `Decoder.Config.enable_weight_tying`                                                |
| rope_theta           | `RoPE.Config.theta`                                                                 |
| rope_scaling llama3  | `RoPE.Config(scaling="llama", ...)` (ComplexRoPE only: llama3 family)               |
| rope_scaling yarn    | `RoPE.Config(scaling="yarn", ...)`; YaRN's attention factor folded into the softmax |
|                      | scale by `RecipeAttention` (GQAttention leaves it out); `layers: global` scales only|
|                      | the full-attention layers                                                           |
| sliding_window       | torchtitan's attention has no window: through the attention mask of each sliding    |
|                      | layer (`RecipeAttention.Config.sliding_window`; None = global layer): on CPU        |
|                      | `DenseMaskAttention(window=)` ANDs a band into its dense mask; on GPU               |
|                      | `SlidingFlexAttention` ANDs `sliding_window_mask_mod` into the trainer's BlockMask  |
| norm_eps             | every RMSNorm's eps                                                                 |
| max_seq_len          | `RoPE.Config.max_seq_len` (the trainer's `update_from_config` resizes to seq_len)   |

Attention kernel: torchtitan's language models use FlexAttention (`get_attention_config("flex")`), which has
no backward on CPU and needs a BlockMask even for plain causal attention. On CPU the factory uses
`DenseMaskAttention` instead: a FlexAttention subclass (so the trainer still builds BlockMasks for it) that
turns the BlockMask into a dense boolean mask for `scaled_dot_product_attention`, and treats no mask as
causal. This is the "FlexAttention -> dense SDPA mask" fix from FACTS.md, chosen at build time instead of
patched in by `runtime.cpu_compat`.

Parameter counts equal `compiler.estimates.param_counts(spec).total` exactly (RoPE caches are buffers).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, create_mask

from torchtitan.models.common import ComplexRoPE, CosSinRoPE, Embedding, Linear, RMSNorm, RoPE
from torchtitan.models.common.attention import FlexAttention, GQAttention
from torchtitan.models.common.config_utils import get_attention_config, make_ffn_config, make_gqa_config
from torchtitan.models.common.decoder import Decoder, TransformerBlock
# The registries' own initialisers (private names: torchtitan is pinned to 0.3.0, an upgrade fails loudly here).
from torchtitan.models.llama3 import (
    _EMBEDDING_INIT as _LLAMA3_EMBEDDING_INIT,
    _EMBEDDING_SKIP_INIT,
    _LINEAR_INIT as _LLAMA3_LINEAR_INIT,
    _NORM_INIT,
    _depth_init as _llama3_depth_init,
    _output_linear_init as _llama3_output_init,
)
from torchtitan.models.llama3.model import Llama3Model, Llama3TransformerBlock
from torchtitan.models.qwen3 import (
    _EMBEDDING_INIT as _QWEN3_EMBEDDING_INIT,
    _LINEAR_INIT as _QWEN3_LINEAR_INIT,
)
from torchtitan.models.qwen3.model import Qwen3Model, Qwen3TransformerBlock
from torchtitan.protocols.model_spec import ModelSpec as TitanModelSpec

from spec.model import ModelSpec

AttentionKind = Literal["flex", "dense"]
ParamInit = dict[str, Callable[..., Any]]


# --------------------------------------------------------------------------- modules torchtitan lacks


class DenseMaskAttention(FlexAttention):
    """FlexAttention's interface with a dense `scaled_dot_product_attention` kernel: runs and back-propagates
    on CPU, where FlexAttention has no backward.

    `attention_masks` None means causal; a BlockMask (from `Decoder.get_attention_masks`: causal + packed
    documents) is evaluated exactly through its `mask_mod` into a (batch, 1, q_len, kv_len) boolean mask.
    `window` (a sliding-window layer): a query also sees only the `window` most recent keys (itself included).
    Memory is O(seq_len^2) per sequence: meant for CPU and small models, not for long contexts on GPUs.
    Context parallelism is not supported (torchtitan's CP dispatches FlexAttention to its own path).
    """

    @dataclass(kw_only=True, slots=True)
    class Config(FlexAttention.Config):
        window: int | None = None
        """Sliding-window size in tokens; None: full (causal or document) attention."""

    def __init__(self, config: Config):
        super().__init__(config)
        self.window = config.window

    def forward(  # pyrefly: ignore[bad-override]
        self,
        q_BLNH: torch.Tensor,
        k_BLNH: torch.Tensor,
        v_BLNH: torch.Tensor,
        *,
        attention_masks: BlockMask | None = None,
        score_mod: Callable[..., torch.Tensor] | None = None,
        scale: float | None = None,
        enable_gqa: bool = False,
        out_transform: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if score_mod is not None or out_transform is not None:
            raise NotImplementedError("DenseMaskAttention supports neither score_mod nor out_transform")
        q, k, v = (t.transpose(1, 2) for t in (q_BLNH, k_BLNH, v_BLNH))
        if attention_masks is None and self.window is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=enable_gqa)
        else:
            q_len, kv_len = q.shape[2], k.shape[2]
            if attention_masks is None:
                mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=q.device).tril(kv_len - q_len)
            else:
                mask = dense_mask(attention_masks, q_len, kv_len, q.device)
            if self.window is not None:
                mask = mask & band_mask(q_len, kv_len, self.window, q.device)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=enable_gqa)
        return out.transpose(1, 2)


class SlidingFlexAttention(FlexAttention):
    """FlexAttention for a sliding-window layer (GPU): the BlockMask the trainer builds for the whole model
    (causal + packed documents) ANDed with this layer's window, `sliding_window_mask_mod(window)`; the new
    BlockMask is built once per step and window (cached on the incoming mask) and shared by the layers with that
    window. torchtitan's FlexAttention has no window of its own."""

    @dataclass(kw_only=True, slots=True)
    class Config(FlexAttention.Config):
        window: int = 0

    def __init__(self, config: Config):
        super().__init__(config)
        if config.window <= 0:
            raise ValueError(f"SlidingFlexAttention: window must be positive (got {config.window})")
        self.window = config.window

    def forward(self, q_BLNH: torch.Tensor, k_BLNH: torch.Tensor, v_BLNH: torch.Tensor, *,  # pyrefly: ignore[bad-override]
                attention_masks: BlockMask | None = None, **kwargs: Any) -> torch.Tensor:
        if attention_masks is None:
            raise ValueError("SlidingFlexAttention needs the trainer's BlockMask (positions)")
        return super().forward(q_BLNH, k_BLNH, v_BLNH, attention_masks=windowed_block_mask(attention_masks, self.window),
                               **kwargs)


def sliding_window_mask_mod(window: int) -> Callable[..., torch.Tensor]:
    """mask_mod: key kv_idx is within the `window` most recent positions of query q_idx."""
    def mod(b: Any, h: Any, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        return q_idx - kv_idx < window
    return mod


def windowed_block_mask(block_mask: BlockMask, window: int) -> BlockMask:
    """`block_mask` ANDed with a sliding window (cached on the mask object: one per window per step)."""
    from torch.nn.attention.flex_attention import and_masks, create_block_mask

    cache = getattr(block_mask, "_recipe_windowed", None)
    if cache is None:
        cache = {}
        block_mask._recipe_windowed = cache  # type: ignore[attr-defined]
    if window not in cache:
        batch, heads, q_len, kv_len = block_mask.shape
        cache[window] = create_block_mask(and_masks(block_mask.mask_mod, sliding_window_mask_mod(window)),
                                          batch, None if heads == 1 else heads, q_len, kv_len,
                                          device=block_mask.kv_num_blocks.device, BLOCK_SIZE=block_mask.BLOCK_SIZE)
    return cache[window]


def band_mask(q_len: int, kv_len: int, window: int, device: torch.device | str) -> torch.Tensor:
    """(q_len, kv_len) bool: key j within the `window` most recent positions of query i (queries aligned to the
    end of the keys)."""
    q = torch.arange(q_len, device=device)[:, None] + (kv_len - q_len)
    kv = torch.arange(kv_len, device=device)[None, :]
    return q - kv < window


def dense_mask(block_mask: BlockMask, q_len: int, kv_len: int, device: torch.device) -> torch.Tensor:
    """The exact boolean mask (batch, 1, q_len, kv_len) a BlockMask's `mask_mod` describes."""
    return create_mask(block_mask.mask_mod, block_mask.shape[0], 1, q_len, kv_len, device=device)


class ProjectionRMSNorm(RMSNorm):
    """RMSNorm over a whole q or k projection (all heads at once), as Olmo 2/3 do; torchtitan's QK-norm is
    per head only. Takes and returns (batch, seq, heads, head_dim); `normalized_shape` = heads * head_dim.

    Under tensor parallelism the heads are sharded and this would normalise each shard on its own: a TP
    trainer needs a cross-shard RMS here (not implemented).
    """

    @dataclass(kw_only=True, slots=True)
    class Config(RMSNorm.Config):
        pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.flatten(-2)).view_as(x)


class RecipeAttention(GQAttention):
    """torchtitan's GQAttention plus what the recipe needs and it lacks.

    - `k_norm`: a separate config for k's norm (full QK-norm: q's is n_heads*head_dim wide, k's
      n_kv_heads*head_dim); None builds both from `qk_norm` as GQAttention does.
    - YaRN: the attention factor 0.1*ln(factor)+1 that Hugging Face applies to both q and k (cos/sin scaled)
      is folded into the softmax scale as its square, as torchtitan's GPT-OSS attention does.
    - `sliding_window`: this layer's window in tokens (None: full attention), applied by its inner attention
      (`DenseMaskAttention.window` on CPU, `SlidingFlexAttention` on GPU).
    """

    @dataclass(kw_only=True, slots=True)
    class Config(GQAttention.Config):
        k_norm: RMSNorm.Config | None = None
        sliding_window: int | None = None

    def __init__(self, config: Config):
        super().__init__(config)
        if config.k_norm is not None:
            self.k_norm = config.k_norm.build()
        self.sliding_window = config.sliding_window
        mscale = yarn_attention_factor(config.rope)
        if mscale != 1.0:
            self.scaling = self.head_dim**-0.5 * mscale * mscale


class Olmo3TransformerBlock(Qwen3TransformerBlock):
    """Olmo 3's block: no norm before attention/MLP, an RMSNorm on each branch's output before the residual
    add (OLMo 2's "reordered norm"). torchtitan has no Olmo model; this reuses Qwen3's block with its two
    norms moved: `attention_norm` / `ffn_norm` are Hugging Face's `post_attention_layernorm` /
    `post_feedforward_layernorm`. Same parameters as a pre-norm block.
    """

    @dataclass(kw_only=True, slots=True)
    class Config(Qwen3TransformerBlock.Config):
        pass

    def forward(
        self, x: torch.Tensor, attention_masks: Any, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        h = x + self.attention_norm(self.attention(x, attention_masks, positions))
        return h + self.ffn_norm(self.feed_forward(h))


def yarn_attention_factor(rope: RoPE.Config) -> float:
    """YaRN's attention factor (mscale) for a RoPE config: 0.1*ln(factor)+1, or 1.0 without YaRN scaling."""
    if rope.scaling != "yarn" or rope.rope_factor <= 1.0:
        return 1.0
    return 0.1 * math.log(rope.rope_factor) + 1.0


# --------------------------------------------------------------------------- families


@dataclass(frozen=True)
class _Family:
    model_cls: type[Decoder]
    block_cls: type[TransformerBlock]
    rope_cls: type[RoPE]
    linear_init: ParamInit  # wq, wk, wv, w1
    out_proj_init: Callable[[int, int], ParamInit]  # (layer_id, n_layers) -> init of wo, w2, w3
    embedding_init: ParamInit  # untied input embedding
    output_init: Callable[[int], ParamInit]  # (dim) -> init of the output head


_LLAMA3 = _Family(
    model_cls=Llama3Model,
    block_cls=Llama3TransformerBlock,
    rope_cls=ComplexRoPE,
    linear_init=_LLAMA3_LINEAR_INIT,
    out_proj_init=lambda layer_id, n_layers: _llama3_depth_init(layer_id),
    embedding_init=_LLAMA3_EMBEDDING_INIT,
    output_init=_llama3_output_init,
)
_QWEN3 = _Family(
    model_cls=Qwen3Model,
    block_cls=Qwen3TransformerBlock,
    rope_cls=CosSinRoPE,
    linear_init=_QWEN3_LINEAR_INIT,
    out_proj_init=lambda layer_id, n_layers: _QWEN3_LINEAR_INIT,
    embedding_init=_QWEN3_EMBEDDING_INIT,
    output_init=lambda dim: _QWEN3_LINEAR_INIT,
)
_FAMILIES: dict[str, _Family] = {
    "llama3": _LLAMA3,
    "qwen3": _QWEN3,
    "olmo3": dataclasses.replace(_QWEN3, block_cls=Olmo3TransformerBlock),
}


# --------------------------------------------------------------------------- configs


def _norm(size: int, eps: float, cls: type[RMSNorm] = RMSNorm) -> RMSNorm.Config:
    return cls.Config(normalized_shape=size, eps=eps, param_init=_NORM_INIT)


def _rope_config(spec: ModelSpec, layer: int, rope_cls: type[RoPE]) -> RoPE.Config:
    """RoPE for one layer: theta, max_seq_len and the recipe's scaling (YaRN `layers: global` skips the
    sliding-window layers)."""
    base: dict[str, Any] = dict(dim=spec.resolved_head_dim, max_seq_len=spec.max_seq_len, theta=spec.rope_theta)
    scaling = spec.rope_scaling
    is_global = spec.sliding_window is None or spec.sliding_window.is_global(layer, spec.n_layers)
    if scaling is None or (scaling.kind == "yarn" and scaling.layers == "global" and not is_global):
        return rope_cls.Config(**base)
    if scaling.kind == "llama3":
        if rope_cls is not ComplexRoPE:
            raise NotImplementedError(
                f"model.rope_scaling: kind 'llama3' is not supported for family {spec.family!r} "
                "(torchtitan's CosSinRoPE has no Llama 3 scaling); use kind 'yarn' or family llama3"
            )
        return rope_cls.Config(
            **base, scaling="llama", scaling_factor=scaling.factor, low_freq_factor=scaling.low_freq_factor,
            high_freq_factor=scaling.high_freq_factor, original_max_position_embeddings=scaling.original_max_seq_len,
        )
    return rope_cls.Config(
        **base, scaling="yarn", rope_factor=scaling.factor, beta_fast=scaling.beta_fast,
        beta_slow=scaling.beta_slow, original_seq_len=scaling.original_max_seq_len, truncate=True,
    )


def _qk_norms(spec: ModelSpec) -> tuple[RMSNorm.Config | None, RMSNorm.Config | None]:
    """(q norm, separate k norm or None): per head one RMSNorm(head_dim) serves both; full needs two widths."""
    hd = spec.resolved_head_dim
    if spec.qk_norm == "per_head":
        return _norm(hd, spec.norm_eps), None
    if spec.qk_norm == "full":
        return (_norm(spec.n_heads * hd, spec.norm_eps, ProjectionRMSNorm),
                _norm(spec.n_kv_heads * hd, spec.norm_eps, ProjectionRMSNorm))
    return None, None


def _attention_config(
    spec: ModelSpec, layer: int, family: _Family, inner: FlexAttention.Config, fuse_qkv: bool
) -> RecipeAttention.Config:
    """One layer's attention: torchtitan's `make_gqa_config`, widened into a `RecipeAttention.Config`."""
    q_norm, k_norm = _qk_norms(spec)
    gqa = make_gqa_config(
        dim=spec.d_model, n_heads=spec.n_heads, n_kv_heads=spec.n_kv_heads, head_dim=spec.resolved_head_dim,
        wqkv_param_init=family.linear_init, wo_param_init=family.out_proj_init(layer, spec.n_layers),
        inner_attention=dataclasses.replace(inner), rope=_rope_config(spec, layer, family.rope_cls),
        fuse_qkv=fuse_qkv, qk_norm=q_norm,
    )
    window = spec.sliding_window
    sliding = None if window is None or window.is_global(layer, spec.n_layers) else window.size
    fields = {f.name: getattr(gqa, f.name) for f in dataclasses.fields(gqa) if f.init}
    if sliding is not None:
        fields["inner_attention"] = windowed_attention(inner, sliding)
    return RecipeAttention.Config(**fields, k_norm=k_norm, sliding_window=sliding)


def windowed_attention(inner: FlexAttention.Config, window: int) -> FlexAttention.Config:
    """The inner attention of a sliding-window layer: the dense kernel with a window, or windowed FlexAttention."""
    if isinstance(inner, DenseMaskAttention.Config):
        return dataclasses.replace(inner, window=window)
    fields = {f.name: getattr(inner, f.name) for f in dataclasses.fields(inner) if f.init}
    return SlidingFlexAttention.Config(**fields, window=window)


def _layer_config(
    spec: ModelSpec, layer: int, family: _Family, inner: FlexAttention.Config, fuse_qkv: bool
) -> TransformerBlock.Config:
    out_init = family.out_proj_init(layer, spec.n_layers)
    return family.block_cls.Config(
        attention_norm=_norm(spec.d_model, spec.norm_eps),
        ffn_norm=_norm(spec.d_model, spec.norm_eps),
        attention=_attention_config(spec, layer, family, inner, fuse_qkv),
        feed_forward=make_ffn_config(
            dim=spec.d_model, hidden_dim=spec.ffn_hidden, w1_param_init=family.linear_init,
            w2w3_param_init=out_init,
        ),
    )


def _inner_attention(kind: AttentionKind | None) -> FlexAttention.Config:
    if kind is None:
        kind = "flex" if torch.cuda.is_available() else "dense"
    if kind == "dense":
        return DenseMaskAttention.Config()
    if kind == "flex":
        return get_attention_config("flex")
    raise ValueError(f"unknown attention kind {kind!r}; expected 'flex' or 'dense'")


def _check(spec: ModelSpec) -> None:
    if spec.n_heads % spec.n_kv_heads:
        raise ValueError(f"model.n_heads ({spec.n_heads}) must be a multiple of model.n_kv_heads ({spec.n_kv_heads})")
    if spec.resolved_head_dim % 2:
        raise ValueError(f"model.head_dim ({spec.resolved_head_dim}) must be even for RoPE")


def build_model_config(
    spec: ModelSpec, *, attention: AttentionKind | None = None, fuse_qkv: bool = False
) -> Decoder.Config:
    """The torchtitan model config (`Llama3Model.Config` or `Qwen3Model.Config`) for a recipe's model block.

    attention: "flex" (torchtitan's default for language models; GPU), "dense" (`DenseMaskAttention`; CPU), or
    None for flex when CUDA is available, else dense. fuse_qkv: one fused wqkv projection (torchtitan's registry
    default; checkpoints keep wq/wk/wv names) instead of separate wq, wk, wv.
    """
    _check(spec)
    family = _FAMILIES[spec.family]
    inner = _inner_attention(attention)
    d, vocab, tied = spec.d_model, spec.vocab_size, spec.tie_embeddings
    return family.model_cls.Config(
        dim=d,
        vocab_size=vocab,
        enable_weight_tying=tied,
        tok_embeddings=Embedding.Config(
            num_embeddings=vocab, embedding_dim=d,
            param_init=_EMBEDDING_SKIP_INIT if tied else family.embedding_init,  # tied: the head's init wins
        ),
        norm=_norm(d, spec.norm_eps),
        lm_head=Linear.Config(in_features=d, out_features=vocab, param_init=family.output_init(d)),
        layers=[_layer_config(spec, i, family, inner, fuse_qkv) for i in range(spec.n_layers)],
    )


def build_model(spec: ModelSpec, *, device: str | torch.device = "cpu", seed: int = 0) -> Decoder:
    """An initialised torchtitan model for a recipe's model block, float32, on `device`.

    Built on the meta device and initialised by torchtitan's `init_states` (as its trainer does) under
    `torch.manual_seed(seed)` inside a forked RNG: the same seed gives the same weights, and the caller's RNG
    state is left alone. CPU gets `DenseMaskAttention` (`model(tokens)` is causal attention); other devices get
    FlexAttention, which needs `attention_masks=model.get_attention_masks(positions)` as torchtitan's trainer passes.
    """
    device = torch.device(device)
    config = build_model_config(spec, attention="dense" if device.type == "cpu" else "flex")
    with torch.device("meta"):
        model = config.build()
    model.to_empty(device=device)
    fork_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        model.init_states(buffer_device=device)
    return model


def build_model_spec(spec: ModelSpec, *, name: str = "recipe", attention: AttentionKind | None = None) -> TitanModelSpec:
    """A torchtitan `ModelSpec` (what `Trainer.Config.model_spec` takes) for a recipe's model block: the config
    from `build_model_config` with the family's parallelize/pipelining functions and HF state-dict adapter.

    Olmo 3 gets Qwen 3's parallelize function (same modules) and no state-dict adapter: Qwen 3's names its norms
    input_layernorm/post_attention_layernorm, which would be wrong for Olmo 3's post-norms.
    """
    from torchtitan.distributed.pipeline_parallel import pipeline_llm
    from torchtitan.models.llama3 import Llama3StateDictAdapter, parallelize_llama
    from torchtitan.models.qwen3 import Qwen3StateDictAdapter, parallelize_qwen3

    llama = spec.family == "llama3"
    adapter = {"llama3": Llama3StateDictAdapter, "qwen3": Qwen3StateDictAdapter}.get(spec.family)
    return TitanModelSpec(
        name=spec.family,
        flavor=name,
        model=build_model_config(spec, attention=attention),
        parallelize_fn=parallelize_llama if llama else parallelize_qwen3,
        pipelining_fn=pipeline_llm,
        post_optimizer_build_fn=None,
        state_dict_adapter=adapter,
    )
