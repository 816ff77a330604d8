"""Tests of compiler.estimates against published parameter counts and hand-computed values."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compiler import estimates as est
from spec.model import ModelSpec, SlidingWindow

GIB = 1024**3


def llama31_8b(**kw) -> ModelSpec:
    base = dict(family="llama3", vocab_size=128256, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                ffn_hidden=14336, max_seq_len=131072)
    return ModelSpec(**{**base, **kw})


def qwen3_8b(**kw) -> ModelSpec:
    base = dict(family="qwen3", vocab_size=151936, d_model=4096, n_layers=36, n_heads=32, n_kv_heads=8,
                head_dim=128, ffn_hidden=12288, qk_norm="per_head", max_seq_len=40960)
    return ModelSpec(**{**base, **kw})


def olmo3_7b(**kw) -> ModelSpec:
    base = dict(family="olmo3", vocab_size=100278, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32,
                ffn_hidden=11008, qk_norm="full", max_seq_len=65536,
                sliding_window=SlidingWindow(size=4096, global_every=4, global_last=True))
    return ModelSpec(**{**base, **kw})


def olmo3_32b(**kw) -> ModelSpec:
    base = dict(family="olmo3", vocab_size=100278, d_model=5120, n_layers=64, n_heads=40, n_kv_heads=8,
                head_dim=128, ffn_hidden=27648, qk_norm="full", max_seq_len=65536,
                sliding_window=SlidingWindow(size=4096))
    return ModelSpec(**{**base, **kw})


# ----------------------------------------------------------------- parameters


@pytest.mark.parametrize(
    ("make", "total"),
    [(llama31_8b, 8_030_261_248), (qwen3_8b, 8_190_735_360), (olmo3_7b, 7_298_011_136),
     (olmo3_32b, 32_233_522_176)],
)
def test_published_param_counts(make, total):
    pc = est.param_counts(make())
    assert pc.total == total
    assert pc.output == pc.embedding
    assert pc.non_embedding == pc.total - 2 * pc.embedding


def test_llama_param_breakdown():
    pc = est.param_counts(llama31_8b())
    assert pc.embedding == 128256 * 4096 == 525_336_576
    assert pc.non_embedding == 32 * 218_112_000 + 4096


def test_tied_embeddings_drop_output_head():
    untied, tied = est.param_counts(llama31_8b()), est.param_counts(llama31_8b(tie_embeddings=True))
    assert tied.output == 0
    assert tied.total == untied.total - untied.embedding
    assert tied.non_embedding == untied.non_embedding


def test_qk_norm_variants():
    none = est.param_counts(qwen3_8b(qk_norm="none")).total
    assert est.param_counts(qwen3_8b()).total - none == 36 * 2 * 128
    assert est.param_counts(qwen3_8b(qk_norm="full")).total - none == 36 * (32 * 128 + 8 * 128)


# ----------------------------------------------------------------- KV cache


def test_kv_per_token_llama():
    assert est.kv_cache_bytes_per_token(llama31_8b()) == 2 * 32 * 8 * 128 * 2 == 131072
    assert est.kv_cache_bytes_per_token(llama31_8b(dtype="float32")) == 262144
    assert est.kv_cache_bytes(llama31_8b(), 1000, 3) == 131072 * 1000 * 3


def test_sliding_window_kv_hand_computed():
    model = olmo3_7b()
    assert model.global_layer_count() == 8  # layers 3, 7, ..., 31 (31 is also the last)
    per_layer_token = 2 * 32 * 128 * 2
    expected = per_layer_token * (8 * 65536 + 24 * 4096)
    assert est.kv_cache_bytes(model, 65536) == expected == 10_200_547_328
    full = est.kv_cache_bytes(olmo3_7b(sliding_window=None), 65536)
    assert full == est.kv_cache_bytes_per_token(model) * 65536 == 34_359_738_368
    assert expected < full
    # below the window, sliding layers store everything
    assert est.kv_cache_bytes(model, 4096, 2) == est.kv_cache_bytes(olmo3_7b(sliding_window=None), 4096, 2)


def test_mha_kv_is_four_times_gqa8():
    mha, gqa = olmo3_7b(), olmo3_7b(n_kv_heads=8)
    assert est.kv_cache_bytes_per_token(mha) == 4 * est.kv_cache_bytes_per_token(gqa)
    assert est.kv_cache_bytes(mha, 65536, 5) == 4 * est.kv_cache_bytes(gqa, 65536, 5)


# ----------------------------------------------------------------- FLOPs


def test_flops_close_to_6n_for_short_sequences():
    model = llama31_8b()
    pc = est.param_counts(model)
    six_n = 6 * (pc.total - pc.embedding)
    f = est.training_flops_per_token(model, 128)
    assert six_n < f < 1.05 * six_n


def test_attention_flops_hand_computed():
    model = llama31_8b()
    pc = est.param_counts(model)
    attn = est.training_flops_per_token(model, 8192) - 6 * (pc.total - pc.embedding)
    assert attn == pytest.approx(3 * 32 * 4 * 32 * 128 * 8193 / 2)


def test_sliding_window_reduces_attention_flops():
    sw, full = olmo3_7b(), olmo3_7b(sliding_window=None)
    assert est.training_flops_per_token(sw, 4096) == pytest.approx(est.training_flops_per_token(full, 4096))
    assert est.training_flops_per_token(sw, 65536) < est.training_flops_per_token(full, 65536)
    # mean of min(i+1, w) over [0, S) for S=8, w=4: (1+2+3+4+4+4+4+4)/8
    assert est._mean_attended(8, 4) == pytest.approx(26 / 8)


def test_tied_model_still_counts_lm_head_matmul():
    assert est.training_flops_per_token(llama31_8b(tie_embeddings=True), 128) == pytest.approx(
        est.training_flops_per_token(llama31_8b(), 128))


# ----------------------------------------------------------------- training memory


def mem(model, **kw) -> est.TrainingMemory:
    args = dict(seq_len=8192, micro_batch_size=1, fsdp=64, dp_replicate=1, tp=1, pp=1, cp=1,
                activation_checkpointing="none")
    return est.training_memory_per_gpu(model, **{**args, **kw})


def test_memory_sums_and_sharded_states():
    m = mem(olmo3_7b(n_kv_heads=8))
    assert m.total == m.params + m.grads + m.optimizer + m.activations + m.logits + m.buffers
    total = est.param_counts(olmo3_7b(n_kv_heads=8)).total
    assert m.params == 4 * math.ceil(total / 64) and m.optimizer == 2 * m.params == 2 * m.grads
    assert m.logits == 8192 * 100278 * 8


def test_memory_decreases_with_fsdp_and_checkpointing():
    model = olmo3_7b(n_kv_heads=8)
    assert mem(model, fsdp=128).total < mem(model, fsdp=64).total
    none, sel, full = (mem(model, activation_checkpointing=a) for a in ("none", "selective", "full"))
    assert full.activations < sel.activations < none.activations
    assert full.total < none.total


def test_dp_replicate_does_not_shard_but_tp_does():
    model = llama31_8b()
    assert mem(model, dp_replicate=4) == mem(model)
    assert mem(model, tp=2).total < mem(model).total
    assert mem(model, tp=2).activations < mem(model).activations
    assert mem(model, cp=2).activations < mem(model).activations


@settings(max_examples=50, deadline=None)
@given(seq=st.integers(1, 65536), mbs=st.integers(1, 8), fsdp=st.integers(1, 256),
       ac=st.sampled_from(["none", "selective", "full"]))
def test_memory_monotone(seq, mbs, fsdp, ac):
    model = llama31_8b()
    base = mem(model, seq_len=seq, micro_batch_size=mbs, fsdp=fsdp, activation_checkpointing=ac)
    assert mem(model, seq_len=seq + 1, micro_batch_size=mbs, fsdp=fsdp, activation_checkpointing=ac).total >= base.total
    assert mem(model, seq_len=seq, micro_batch_size=mbs + 1, fsdp=fsdp, activation_checkpointing=ac).total > base.total
    assert mem(model, seq_len=seq, micro_batch_size=mbs, fsdp=fsdp + 1, activation_checkpointing=ac).total <= base.total


def test_memory_rejects_bad_degrees():
    with pytest.raises(ValueError):
        mem(llama31_8b(), fsdp=0)
    with pytest.raises(ValueError):
        mem(llama31_8b(), activation_checkpointing="some")


# ----------------------------------------------------------------- rollout


def test_rollout_memory():
    model = llama31_8b()
    r = est.rollout_memory_per_gpu(model, tensor_parallel=2, sequences=16, context_len=4096)
    assert r.weights == 8_030_261_248 * 2 // 2
    assert r.kv_cache == 131072 * 4096 * 16 // 2
    assert r.total == r.weights + r.kv_cache
    # tp beyond the 8 kv heads replicates heads: KV per GPU stops shrinking
    r8 = est.rollout_memory_per_gpu(model, tensor_parallel=8, sequences=16, context_len=4096)
    r16 = est.rollout_memory_per_gpu(model, tensor_parallel=16, sequences=16, context_len=4096)
    assert r8.kv_cache == r16.kv_cache and r16.weights < r8.weights


def decode(model, **kw) -> float:
    args = dict(sequences=256, prompt_tokens=1024, response_tokens=16384, tensor_parallel=1, engines=8,
                memory_bandwidth_gbps=3350, peak_tflops=989, mfu=0.4)
    return est.rollout_decode_seconds(model, **{**args, **kw})


def test_decode_mha_slower_than_gqa_at_long_context():
    mha, gqa = olmo3_7b(sliding_window=None), olmo3_7b(sliding_window=None, n_kv_heads=8)
    assert decode(mha) > 1.5 * decode(gqa)
    assert decode(gqa, engines=16) < decode(gqa)
    assert decode(gqa, response_tokens=32768) > decode(gqa)


def test_decode_single_sequence_is_weight_bandwidth_bound():
    model = llama31_8b()
    s = decode(model, sequences=1, engines=1, prompt_tokens=1, response_tokens=1000)
    weight_read = 8_030_261_248 * 2 / 3350e9
    assert weight_read * 1000 < s < 1.05 * weight_read * 1000


# ----------------------------------------------------------------- time and dtypes


def test_gpu_hours():
    h = est.train_gpu_hours(6e9, 10**12, peak_tflops=1000, mfu=0.5, gpus=64)
    assert h == pytest.approx(6e21 / 5e14 / 3600)
    assert h == est.train_gpu_hours(6e9, 10**12, peak_tflops=1000, mfu=0.5, gpus=1)
    assert est.wall_hours(h, 64) == pytest.approx(h / 64)


def test_dtype_bytes():
    assert (est.dtype_bytes("bfloat16"), est.dtype_bytes("float16"), est.dtype_bytes("float32")) == (2, 2, 4)
    with pytest.raises(ValueError):
        est.dtype_bytes("int8")


def test_no_heavy_imports():
    import sys
    import subprocess
    code = ("import sys, compiler.estimates; "
            "bad = [m for m in ('torch', 'numpy', 'vllm', 'datasets') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
