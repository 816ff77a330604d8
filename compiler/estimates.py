"""Closed-form estimates: parameter counts, FLOPs, memory and time.

Pure Python (stdlib + `spec` only) so the compiler can size a recipe without torch.
Every byte count is an int; FLOPs and times are floats.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from spec.model import ModelSpec

_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of a compute dtype: bfloat16/float16 = 2, float32 = 4."""
    try:
        return _DTYPE_BYTES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(_DTYPE_BYTES)}") from None


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class ParamCounts:
    total: int
    embedding: int
    output: int  # 0 when the output head is tied to the embedding
    non_embedding: int  # total - embedding - output


def _layer_params(model: ModelSpec) -> int:
    """Parameters of one SwiGLU decoder block (no biases).

    q: d*(h*hd), k and v: d*(kv*hd) each, o: (h*hd)*d, MLP (gate, up, down): 3*d*ffn,
    two RMSNorm weights of d; QK-norm adds 2*hd (per head) or h*hd + kv*hd (over the full projection).
    """
    d, hd, h, kv = model.d_model, model.resolved_head_dim, model.n_heads, model.n_kv_heads
    attn = d * h * hd + 2 * d * kv * hd + h * hd * d
    qk = {"none": 0, "per_head": 2 * hd, "full": h * hd + kv * hd}[model.qk_norm]
    return attn + 3 * d * model.ffn_hidden + 2 * d + qk


def param_counts(model: ModelSpec) -> ParamCounts:
    """Exact parameter counts: embedding V*d + n_layers blocks + final norm d + output head V*d (unless tied)."""
    embedding = model.vocab_size * model.d_model
    output = 0 if model.tie_embeddings else embedding
    total = embedding + model.n_layers * _layer_params(model) + model.d_model + output
    return ParamCounts(total=total, embedding=embedding, output=output, non_embedding=total - embedding - output)


def _matmul_params(model: ModelSpec) -> int:
    """Weights that take part in a matmul per token: everything but the embedding lookup, plus the LM head
    (which is the embedding matrix when tied). Norm weights are included; they are negligible."""
    pc = param_counts(model)
    return pc.total - pc.embedding + (pc.embedding if model.tie_embeddings else 0)


# --------------------------------------------------------------------------- KV cache


def kv_cache_bytes_per_token(model: ModelSpec) -> int:
    """KV-cache bytes per token with every layer at full context: 2 (K, V) * layers * kv_heads * hd * dtype."""
    return 2 * model.n_layers * model.n_kv_heads * model.resolved_head_dim * dtype_bytes(model.dtype)


def _is_global(model: ModelSpec, layer: int) -> bool:
    return model.sliding_window is None or model.sliding_window.is_global(layer, model.n_layers)


def kv_cache_bytes(model: ModelSpec, context_len: int, sequences: int = 1) -> int:
    """KV-cache bytes for `sequences` sequences of `context_len` tokens.

    A global layer stores `context_len` tokens, a sliding-window layer min(context_len, window).
    """
    per_token_layer = 2 * model.n_kv_heads * model.resolved_head_dim * dtype_bytes(model.dtype)
    window = model.sliding_window.size if model.sliding_window is not None else context_len
    tokens = sum(
        context_len if _is_global(model, i) else min(context_len, window) for i in range(model.n_layers)
    )
    return per_token_layer * tokens * sequences


# --------------------------------------------------------------------------- FLOPs


def _mean_attended(seq_len: int, window: int | None) -> float:
    """Mean keys attended per query under a causal mask: mean of min(i+1, window) over i in [0, seq_len)."""
    if window is None or seq_len <= window:
        return (seq_len + 1) / 2
    return (window * (window + 1) / 2 + (seq_len - window) * window) / seq_len


def attention_flops_per_token(model: ModelSpec, seq_len: int) -> float:
    """Forward attention FLOPs per token: per layer 2 matmuls (QK^T, AV) * 2 FLOPs * h * hd * mean keys."""
    hd, h = model.resolved_head_dim, model.n_heads
    window = model.sliding_window.size if model.sliding_window is not None else None
    return sum(
        4 * h * hd * _mean_attended(seq_len, None if _is_global(model, i) else window)
        for i in range(model.n_layers)
    )


def training_flops_per_token(model: ModelSpec, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward = 3x forward), Chinchilla/PaLM style 6N + attention.

    N counts every matmul weight including the LM head (not the embedding lookup): 6N.
    Attention (not in N) adds 3 * sum over layers of 4 * h * hd * ctx_eff, where ctx_eff is the mean number of
    keys a query attends to under the causal mask: (seq_len+1)/2 on global layers, mean of min(i+1, window)
    on sliding-window layers.
    """
    return 6.0 * _matmul_params(model) + 3.0 * attention_flops_per_token(model, seq_len)


# --------------------------------------------------------------------------- training memory


@dataclass(frozen=True)
class TrainingMemory:
    params: int
    grads: int
    optimizer: int
    activations: int
    logits: int
    buffers: int
    total: int


def _activation_bytes_per_layer(model: ModelSpec, tokens: int, tp: int) -> int:
    """Activation bytes one decoder block keeps for backward (no recomputation).

    Itemised like Korthikanti et al. 2022 ("Reducing Activation Recomputation", sec. 4.1), adapted to
    SwiGLU, RMSNorm, no dropout and flash attention (no s^2 scores: only q, k, v and the output are kept).
    Per token, in elements: 4d replicated over TP (both norm inputs and outputs; no sequence parallelism, so
    conservative), plus TP-split: q, k, v (h + 2kv)*hd, attention output h*hd, and 4*ffn for the MLP
    (gate and up outputs, silu(gate), and the product fed to the down projection).
    """
    hd, h, kv = model.resolved_head_dim, model.n_heads, model.n_kv_heads
    split = (2 * h + 2 * kv) * hd + 4 * model.ffn_hidden
    return tokens * dtype_bytes(model.dtype) * (4 * model.d_model + math.ceil(split / tp))


def training_memory_per_gpu(
    model: ModelSpec,
    *,
    seq_len: int,
    micro_batch_size: int,
    fsdp: int,
    dp_replicate: int = 1,
    tp: int = 1,
    pp: int = 1,
    cp: int = 1,
    activation_checkpointing: Literal["none", "selective", "full"] = "none",
) -> TrainingMemory:
    """Peak memory per GPU of FSDP2 mixed-precision training as torchtitan does it.

    - params, grads, optimizer: fp32 master weights (4 B/param), fp32 gradients (4 B), AdamW exp_avg and
      exp_avg_sq (8 B), each rank owning total / (tp*pp) split over the FSDP mesh. torchtitan shards
      over dp_shard*cp (the "dp_shard_cp" mesh), so cp shards too; dp_replicate (HSDP) does not shard.
    - buffers: the compute-dtype copies FSDP all-gathers: the two largest FSDP units (blocks, the embedding,
      the output head) in flight at once (the current one and the prefetched one), split by tp.
    - activations: local tokens s*b with s = seq_len/cp; per block see `_activation_bytes_per_layer`;
      ceil(n_layers/pp) blocks on the GPU (one micro-batch in flight per stage). "full" checkpointing keeps
      only each block's input (s*b*d) plus one block's full activations during its recompute; "selective"
      keeps half of the full per-block activations (roughly: attention recomputed, matmul outputs kept).
    - logits: fp32 logits and their gradient, s*b*V/tp*4*2 (on the last pipeline stage; counted always,
      as the worst rank).
    """
    for name, v in dict(seq_len=seq_len, micro_batch_size=micro_batch_size, fsdp=fsdp,
                        dp_replicate=dp_replicate, tp=tp, pp=pp, cp=cp).items():
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    pc = param_counts(model)
    p = dtype_bytes(model.dtype)
    owned = math.ceil(pc.total / (tp * pp * fsdp * cp))
    units = sorted([pc.embedding, pc.output + model.d_model] + [_layer_params(model)] * min(2, model.n_layers),
                   reverse=True)
    buffers = math.ceil(sum(units[:2]) / tp) * p

    tokens = math.ceil(seq_len / cp) * micro_batch_size
    layers = math.ceil(model.n_layers / pp)
    full = _activation_bytes_per_layer(model, tokens, tp)
    if activation_checkpointing == "none":
        activations = layers * full
    elif activation_checkpointing == "selective":
        activations = layers * (full // 2)
    elif activation_checkpointing == "full":
        activations = layers * tokens * model.d_model * p + full
    else:
        raise ValueError(f"unknown activation_checkpointing {activation_checkpointing!r}")
    logits = tokens * math.ceil(model.vocab_size / tp) * 4 * 2
    params, grads, optimizer = 4 * owned, 4 * owned, 8 * owned
    return TrainingMemory(
        params=params, grads=grads, optimizer=optimizer, activations=activations, logits=logits,
        buffers=buffers, total=params + grads + optimizer + activations + logits + buffers,
    )


# --------------------------------------------------------------------------- rollout (vLLM sidecar)


@dataclass(frozen=True)
class RolloutMemory:
    weights: int
    kv_cache: int
    total: int


def _kv_split(model: ModelSpec, tensor_parallel: int) -> int:
    """KV heads split over TP, never below one head per GPU (TP > kv_heads replicates heads)."""
    return min(tensor_parallel, model.n_kv_heads)


def rollout_memory_per_gpu(
    model: ModelSpec, *, tensor_parallel: int, sequences: int, context_len: int
) -> RolloutMemory:
    """Memory per GPU of one vLLM engine: weights total*dtype/tp, KV cache of `sequences` at `context_len`
    divided by min(tp, kv_heads)."""
    weights = math.ceil(param_counts(model).total * dtype_bytes(model.dtype) / tensor_parallel)
    kv = math.ceil(kv_cache_bytes(model, context_len, sequences) / _kv_split(model, tensor_parallel))
    return RolloutMemory(weights=weights, kv_cache=kv, total=weights + kv)


# --------------------------------------------------------------------------- time


def train_gpu_hours(flops_per_token: float, tokens: int, peak_tflops: float, mfu: float, gpus: int) -> float:
    """Total GPU-hours: flops_per_token * tokens / (peak_tflops * 1e12 * mfu) / 3600.

    Independent of `gpus` (total GPU-hours, not wall time: see `wall_hours`); `gpus` is only validated.
    """
    if peak_tflops <= 0 or not 0 < mfu <= 1 or gpus < 1:
        raise ValueError("need peak_tflops > 0, 0 < mfu <= 1 and gpus >= 1")
    return flops_per_token * tokens / (peak_tflops * 1e12 * mfu) / 3600.0


def wall_hours(gpu_hours: float, gpus: int) -> float:
    """Wall-clock hours when `gpus` GPUs share `gpu_hours` evenly."""
    if gpus < 1:
        raise ValueError("gpus must be >= 1")
    return gpu_hours / gpus


def _decode_attention_flops(model: ModelSpec, context_len: int) -> float:
    """Forward attention FLOPs of one new token over `context_len` cached keys: 4 * h * hd per key and layer
    (QK^T and AV), with sliding-window layers attending to at most `window` keys."""
    window = model.sliding_window.size if model.sliding_window is not None else context_len
    keys = sum(context_len if _is_global(model, i) else min(context_len, window) for i in range(model.n_layers))
    return 4.0 * model.n_heads * model.resolved_head_dim * keys


def rollout_decode_seconds(
    model: ModelSpec,
    *,
    sequences: int,
    prompt_tokens: int,
    response_tokens: int,
    tensor_parallel: int,
    engines: int,
    memory_bandwidth_gbps: float,
    peak_tflops: float,
    mfu: float,
) -> float:
    """Seconds to generate `sequences` responses spread over `engines` engines of `tensor_parallel` GPUs.

    Each engine batches B = ceil(sequences / engines) sequences (no cap).
    Prefill is compute bound: 2 * N * prompt_tokens * B FLOPs over the engine's GPUs at peak*mfu.
    Each of the `response_tokens` decode steps reads all weights once (weight bytes / tp per GPU) plus the
    batch's KV cache at the mean context prompt + response/2 (sliding windows honoured; split over
    min(tp, kv_heads)), and does 2 * N * B / tp FLOPs (+ attention); a step takes the longer of memory time
    (bytes / bandwidth) and compute time. N is the matmul weight count. GQA/MQA differ from MHA via KV reads.
    """
    if min(sequences, tensor_parallel, engines) < 1 or memory_bandwidth_gbps <= 0 or peak_tflops <= 0 or mfu <= 0:
        raise ValueError("sequences, tensor_parallel, engines >= 1 and positive bandwidth, peak, mfu required")
    batch = math.ceil(sequences / engines)
    n = _matmul_params(model)
    flops_rate = peak_tflops * 1e12 * mfu  # per GPU
    prefill = 2.0 * n * prompt_tokens * batch / (tensor_parallel * flops_rate)
    mean_ctx = prompt_tokens + response_tokens // 2
    weight_bytes = param_counts(model).total * dtype_bytes(model.dtype) / tensor_parallel
    kv_bytes = kv_cache_bytes(model, mean_ctx, batch) / _kv_split(model, tensor_parallel)
    step_flops = batch * (2.0 * n + _decode_attention_flops(model, mean_ctx)) / tensor_parallel
    step = max((weight_bytes + kv_bytes) / (memory_bandwidth_gbps * 1e9), step_flops / flops_rate)
    return prefill + response_tokens * step
