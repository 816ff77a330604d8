"""Models built from a recipe's `model` block (runtime/model_factory.py), the CPU compatibility layer
(runtime/cpu_compat.py) and the Hugging Face export (runtime/hf_export.py).

Needs the runtime environment (`pip install -e '.[test,runtime]'`: torch, torchtitan, safetensors).
Tiny models only; the published architectures are built on the meta device (no memory, no init).
Run: `python -m pytest tests/runtime/test_model_factory.py -q -p no:cacheprovider` (add `-m slow` for the
two-process FSDP check).
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.nn.attention.flex_attention import and_masks, create_block_mask
from torchtitan.models.common.attention import (
    FlexAttention, get_causal_mask_mod, get_efficient_causal_mask_mod_for_packed_document)

from compiler.build import compile_recipe
from compiler.estimates import param_counts
from runtime import cpu_compat
from runtime.hf_export import _adapter, export_hf, hf_config
from runtime.model_factory import (
    DenseMaskAttention, ProjectionRMSNorm, RecipeAttention, build_model, build_model_config, build_model_spec)
from spec.model import ModelSpec

ROOT = Path(__file__).resolve().parents[2]

BASE: dict[str, Any] = dict(family="llama3", vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                            ffn_hidden=96, max_seq_len=128, dtype="float32")
VARIANTS: dict[str, dict[str, Any]] = {
    "mha": dict(n_kv_heads=4),
    "mqa": dict(n_kv_heads=1),
    "qwen3-per-head": dict(family="qwen3", qk_norm="per_head", head_dim=32, tie_embeddings=True),
    "olmo3-full": dict(family="olmo3", qk_norm="full"),
    "olmo3-full-gqa-window-yarn": dict(
        family="olmo3", qk_norm="full", n_layers=4, head_dim=24, sliding_window={"size": 16, "global_every": 2},
        rope_scaling={"kind": "yarn", "factor": 4, "original_max_seq_len": 32, "layers": "global"}),
    "untied": dict(tie_embeddings=False),
    "tied": dict(tie_embeddings=True),
    "head-dim-24": dict(head_dim=24),
    "llama3-rope-scaling": dict(rope_scaling={"kind": "llama3", "factor": 8, "original_max_seq_len": 32}),
    "llama3-yarn": dict(rope_scaling={"kind": "yarn", "factor": 2, "original_max_seq_len": 64}),
}
# FACTS.md's table: (model block, published parameter count).
PUBLISHED: dict[str, tuple[dict[str, Any], int]] = {
    "llama-3.1-8b": (dict(family="llama3", vocab_size=128256, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                          ffn_hidden=14336, max_seq_len=8192), 8_030_261_248),
    "qwen3-8b": (dict(family="qwen3", vocab_size=151936, d_model=4096, n_layers=36, n_heads=32, n_kv_heads=8,
                      head_dim=128, ffn_hidden=12288, qk_norm="per_head", max_seq_len=8192), 8_190_735_360),
    "olmo-3-7b": (dict(family="olmo3", vocab_size=100278, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32,
                       ffn_hidden=11008, qk_norm="full", max_seq_len=8192, sliding_window={"size": 4096}),
                  7_298_011_136),
    "olmo-3-32b": (dict(family="olmo3", vocab_size=100278, d_model=5120, n_layers=64, n_heads=40, n_kv_heads=8,
                        head_dim=128, ffn_hidden=27648, qk_norm="full", max_seq_len=8192,
                        sliding_window={"size": 4096}), 32_233_522_176),
}


def make_spec(**overrides: Any) -> ModelSpec:
    return ModelSpec(**{**BASE, **overrides})


@pytest.fixture(scope="module")
def tiny_recipe() -> Any:
    """The full tiny pipeline (its RegMix block names the proxy model); the same model as recipes/tiny-think.yaml."""
    recipe = compile_recipe(str(ROOT / "tests" / "compiler" / "recipes" / "tiny-think-full.yaml")).recipe
    assert recipe.model == compile_recipe(str(ROOT / "recipes" / "tiny-think.yaml")).recipe.model
    return recipe


def recipe_specs(recipe: Any) -> dict[str, ModelSpec]:
    return {"tiny-think": recipe.model, "tiny-regmix-proxy": recipe.data.mix.proxy.model}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def attention(model: torch.nn.Module, layer: int = 0) -> RecipeAttention:
    return model.layers[str(layer)].attention


# --------------------------------------------------------------------------- parameter counts


@pytest.mark.parametrize("name", ["tiny-think", "tiny-regmix-proxy"])
def test_recipe_models_have_exactly_the_estimated_parameter_count(tiny_recipe: Any, name: str) -> None:
    spec = recipe_specs(tiny_recipe)[name]
    assert n_params(build_model(spec)) == param_counts(spec).total


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variants_have_exactly_the_estimated_parameter_count(variant: str) -> None:
    spec = make_spec(**VARIANTS[variant])
    assert n_params(build_model(spec)) == param_counts(spec).total


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_architectures_have_their_published_parameter_count(name: str) -> None:
    block, published = PUBLISHED[name]
    spec = ModelSpec(**block)
    with torch.device("meta"):
        model = build_model_config(spec).build()
    assert n_params(model) == published == param_counts(spec).total


def test_tied_embeddings_share_one_tensor() -> None:
    tied, untied = build_model(make_spec(tie_embeddings=True)), build_model(make_spec(tie_embeddings=False))
    assert tied.tok_embeddings.weight is tied.lm_head.weight
    assert untied.tok_embeddings.weight is not untied.lm_head.weight
    assert n_params(untied) - n_params(tied) == BASE["vocab_size"] * BASE["d_model"]


# --------------------------------------------------------------------------- forward / backward


@pytest.mark.parametrize("variant", ["tiny-think", "tiny-regmix-proxy", *sorted(VARIANTS)])
def test_forward_and_backward_on_cpu(tiny_recipe: Any, variant: str) -> None:
    spec = recipe_specs(tiny_recipe).get(variant) or make_spec(**VARIANTS.get(variant, {}))
    model = build_model(spec, seed=0)
    tokens = torch.randint(0, spec.vocab_size, (2, 64), generator=torch.Generator().manual_seed(0))
    logits = model(tokens)
    assert logits.shape == (2, 64, spec.vocab_size)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_same_seed_same_weights_and_callers_rng_untouched() -> None:
    spec = make_spec(family="qwen3", qk_norm="per_head")
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a, b, c = build_model(spec, seed=7), build_model(spec, seed=7), build_model(spec, seed=8)
    assert torch.rand(1) == expected_next
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["layers.0.attention.qkv_linear.wq.weight"], sc["layers.0.attention.qkv_linear.wq.weight"])


def test_cpu_models_use_dense_attention_and_gpu_configs_flex() -> None:
    spec = make_spec()
    assert isinstance(attention(build_model(spec)).inner_attention, DenseMaskAttention)
    assert type(build_model_config(spec, attention="flex").layers[0].attention.inner_attention) is FlexAttention.Config


@pytest.mark.parametrize("variant", ["tied", "olmo3-full", "qwen3-per-head"])
def test_models_satisfy_torchtitans_module_protocol(variant: str) -> None:
    """torchtitan's Trainer calls `verify_module_protocol()` on every model it builds."""
    build_model(make_spec(**VARIANTS[variant])).verify_module_protocol()


def test_dense_attention_follows_the_packed_document_mask() -> None:
    """Two documents packed in one row: each sees only itself, exactly as if run alone."""
    spec = make_spec(family="qwen3", qk_norm="per_head")
    model = build_model(spec)
    g = torch.Generator().manual_seed(1)
    first, second = torch.randint(0, 256, (1, 20), generator=g), torch.randint(0, 256, (1, 44), generator=g)
    tokens = torch.cat([first, second], dim=1)
    positions = torch.cat([torch.arange(20), torch.arange(44)]).unsqueeze(0)
    mask_mod = and_masks(get_causal_mask_mod(), get_efficient_causal_mask_mod_for_packed_document(positions))
    block_mask = create_block_mask(mask_mod, 1, None, 64, 64, device="cpu")  # eager: no compile in tests
    with torch.no_grad():
        packed = model(tokens, positions=positions, attention_masks=block_mask)
        alone = torch.cat([model(first), model(second)], dim=1)
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- architecture details


@pytest.mark.parametrize("n_kv_heads", [1, 2, 4])
def test_gqa_projection_widths(n_kv_heads: int) -> None:
    spec = make_spec(n_kv_heads=n_kv_heads, head_dim=24)
    qkv = attention(build_model(spec)).qkv_linear
    assert qkv.wq.out_features == 4 * 24
    assert qkv.wk.out_features == qkv.wv.out_features == n_kv_heads * 24
    assert attention(build_model(spec)).wo.in_features == 4 * 24


def test_explicit_head_dim_sets_rope_and_softmax_scale() -> None:
    attn = attention(build_model(make_spec(head_dim=24)))
    assert attn.head_dim == 24 and attn.rope.config.dim == 24
    assert attn.scaling == pytest.approx(24**-0.5)


def test_per_head_qk_norm_is_head_dim_wide() -> None:
    attn = attention(build_model(make_spec(family="qwen3", qk_norm="per_head", head_dim=32)))
    assert attn.q_norm.weight.shape == attn.k_norm.weight.shape == (32,)


def test_full_qk_norm_normalises_over_the_whole_projection() -> None:
    spec = make_spec(family="olmo3", qk_norm="full", n_heads=4, n_kv_heads=2, head_dim=24)
    attn = attention(build_model(spec))
    assert isinstance(attn.q_norm, ProjectionRMSNorm) and isinstance(attn.k_norm, ProjectionRMSNorm)
    assert attn.q_norm.weight.shape == (4 * 24,)
    assert attn.k_norm.weight.shape == (2 * 24,)
    with torch.no_grad():
        attn.q_norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 5, 4, 24)
    expected = F.rms_norm(x.flatten(-2), (96,), attn.q_norm.weight, spec.norm_eps).view_as(x)
    torch.testing.assert_close(attn.q_norm(x), expected)
    # Not the same as normalising each head on its own: one RMS over all 96 values.
    per_head = F.rms_norm(x, (24,), None, spec.norm_eps) * attn.q_norm.weight.view(4, 24)
    assert not torch.allclose(attn.q_norm(x), per_head)


def test_olmo3_normalises_after_attention_and_mlp() -> None:
    """Post-norm: with unit norm weights and the MLP branch zeroed, the block adds an RMS-1 vector per token."""
    model = build_model(make_spec(family="olmo3", qk_norm="full"))
    block = model.layers["0"]
    x = torch.randn(2, 8, 64) * 10
    with torch.no_grad():
        block.ffn_norm.weight.zero_()
        added = block(x, None) - x
    torch.testing.assert_close(added.pow(2).mean(-1).sqrt(), torch.ones(2, 8), rtol=1e-3, atol=1e-3)


def test_sliding_window_is_set_per_layer_on_its_attention_kernel() -> None:
    spec = make_spec(family="olmo3", qk_norm="full", n_layers=8, sliding_window={"size": 16})
    config = build_model_config(spec)
    windows = [layer.attention.sliding_window for layer in config.layers]
    assert windows == [16, 16, 16, None, 16, 16, 16, None]  # every 4th and the last are global
    assert [layer.attention.inner_attention.window for layer in config.layers] == windows  # dense kernel on CPU
    assert [attention(build_model(spec), i).sliding_window for i in (0, 3)] == [16, None]
    flex = build_model_config(spec, attention="flex")
    kinds = [type(layer.attention.inner_attention).__qualname__ for layer in flex.layers]
    assert kinds[:4] == ["SlidingFlexAttention.Config"] * 3 + ["FlexAttention.Config"]
    assert flex.layers[0].attention.inner_attention.window == 16


def test_sliding_window_limits_what_a_token_sees() -> None:
    """Every layer sliding with window 3: a position sees at most n_layers * (3 - 1) tokens back; a global model
    sees everything."""
    window = dict(size=3, global_every=None, global_last=False)
    for sliding, n_layers in ((window, 2), (None, 2)):
        model = build_model(make_spec(family="olmo3", n_layers=n_layers, sliding_window=sliding), seed=0)
        tokens = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(1))
        changed = tokens.clone()
        changed[0, 0] = (tokens[0, 0] + 1) % 256
        with torch.no_grad():
            moved = (model(tokens) - model(changed)).abs().amax(-1)[0]
        reach = n_layers * (window["size"] - 1)  # position `reach` is the last that token 0 can influence
        if sliding:
            assert (moved[:reach + 1] > 0).all() and (moved[reach + 1:] == 0).all(), moved
        else:
            assert (moved > 0).all()


def test_dense_window_matches_sdpa_with_the_band_and_document_masks() -> None:
    from runtime.model_factory import DenseMaskAttention, band_mask, dense_mask, sliding_window_mask_mod

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 10, 4, 8) for _ in range(3))
    positions = torch.tensor([list(range(6)) + list(range(4)), list(range(10))])  # two packed documents in row 0
    doc = (positions == 0).cumsum(-1)  # document id per token

    def document_causal(b: Any, h: Any, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        return (doc[b, q_idx] == doc[b, kv_idx]) & (q_idx >= kv_idx)

    block = create_block_mask(document_causal, 2, None, 10, 10, device="cpu", BLOCK_SIZE=2)
    out = DenseMaskAttention(DenseMaskAttention.Config(window=3))(q, k, v, attention_masks=block)
    mask = dense_mask(block, 10, 10, torch.device("cpu")) & band_mask(10, 10, 3, "cpu")
    ref = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), attn_mask=mask).transpose(1, 2)
    torch.testing.assert_close(out, ref)
    composed = create_block_mask(and_masks(document_causal, sliding_window_mask_mod(3)), 2, None, 10, 10,
                                 device="cpu", BLOCK_SIZE=2)
    assert torch.equal(dense_mask(composed, 10, 10, torch.device("cpu")), mask)


def test_windowed_block_mask_is_the_trainers_mask_and_the_band_built_once() -> None:
    from runtime.model_factory import band_mask, dense_mask, windowed_block_mask

    block = create_block_mask(lambda b, h, q, kv: q >= kv, 1, None, 512, 512, device="cpu")
    windowed = windowed_block_mask(block, 64)
    expected = dense_mask(block, 512, 512, torch.device("cpu")) & band_mask(512, 512, 64, "cpu")
    assert torch.equal(dense_mask(windowed, 512, 512, torch.device("cpu")), expected)
    assert windowed_block_mask(block, 64) is windowed  # cached for the other layers of this step

    def blocks(mask: Any) -> int:  # 128 x 128 blocks the kernel visits (partial + full)
        return int(mask.kv_num_blocks.sum() + mask.full_kv_num_blocks.sum())

    assert (blocks(block), blocks(windowed)) == (10, 7)  # causal 1+2+3+4; the band touches at most 2 per row


def test_rope_theta_and_max_seq_len() -> None:
    rope = build_model_config(make_spec(rope_theta=12345.0, max_seq_len=96)).layers[0].attention.rope
    assert (rope.theta, rope.max_seq_len, rope.scaling) == (12345.0, 96, "none")


def test_yarn_scales_global_layers_and_folds_the_attention_factor_into_the_softmax_scale() -> None:
    spec = make_spec(**VARIANTS["olmo3-full-gqa-window-yarn"])
    model = build_model(spec)
    mscale = 0.1 * math.log(4) + 1
    sliding, global_ = attention(model, 0), attention(model, 1)  # global_every 2: layers 1 and 3 are global
    assert (sliding.sliding_window, global_.sliding_window) == (16, None)
    assert sliding.rope.config.scaling == "none" and sliding.scaling == pytest.approx(24**-0.5)
    assert global_.rope.config.scaling == "yarn" and global_.rope.config.rope_factor == 4
    assert global_.rope.config.original_seq_len == 32
    assert global_.scaling == pytest.approx(24**-0.5 * mscale**2)


def test_llama3_rope_scaling_maps_to_torchtitan_llama_scaling() -> None:
    rope = build_model_config(make_spec(**VARIANTS["llama3-rope-scaling"])).layers[0].attention.rope
    assert rope.scaling == "llama" and rope.scaling_factor == 8 and rope.original_max_position_embeddings == 32


def test_llama3_rope_scaling_on_a_cos_sin_family_names_the_field() -> None:
    spec = make_spec(family="qwen3", rope_scaling={"kind": "llama3", "factor": 8, "original_max_seq_len": 32})
    with pytest.raises(NotImplementedError, match="model.rope_scaling"):
        build_model_config(spec)


def test_norm_eps_reaches_every_norm() -> None:
    model = build_model(make_spec(family="qwen3", qk_norm="per_head", norm_eps=1e-6))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.RMSNorm)]
    assert len(norms) == 2 * 4 + 1 and {m.eps for m in norms} == {1e-6}


def test_uneven_gqa_is_refused() -> None:
    with pytest.raises(ValueError, match="multiple of model.n_kv_heads"):
        build_model_config(make_spec(n_heads=4, n_kv_heads=3))


def test_fused_qkv_has_the_same_parameters_and_checkpoint_names() -> None:
    spec = make_spec()
    with torch.device("meta"):
        fused = build_model_config(spec, fuse_qkv=True).build()
    assert n_params(fused) == param_counts(spec).total
    assert set(fused.state_dict()) == set(build_model(spec).state_dict())


def test_model_spec_for_the_torchtitan_trainer() -> None:
    from torchtitan.models.llama3 import Llama3StateDictAdapter, parallelize_llama

    titan = build_model_spec(make_spec(), name="tiny")
    assert (titan.name, titan.flavor, titan.parallelize_fn, titan.state_dict_adapter) == (
        "llama3", "tiny", parallelize_llama, Llama3StateDictAdapter)
    assert build_model_spec(make_spec(family="olmo3", qk_norm="full")).state_dict_adapter is None


# --------------------------------------------------------------------------- CPU compatibility layer


def _compat_state() -> tuple[Any, ...]:
    import torchtitan.distributed.fsdp as titan_fsdp
    import torchtitan.tools.utils as titan_utils

    cpu_funcs = tuple(getattr(torch.cpu, name, None) for name in cpu_compat._CPU_STUBS)
    return titan_utils.device_type, titan_utils.device_module, titan_fsdp.disable_fsdp_gradient_division, cpu_funcs


def test_compat_is_a_no_op_when_cuda_is_available(monkeypatch: pytest.MonkeyPatch) -> None:
    before = _compat_state()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cpu_compat.apply_cpu_compat() == []
    assert _compat_state() == before


needs_cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU patches do nothing where CUDA is")


@needs_cpu_only
def test_compat_is_idempotent_and_makes_torchtitan_see_the_cpu() -> None:
    import torchtitan.distributed.fsdp as titan_fsdp
    import torchtitan.tools.utils as titan_utils

    first = cpu_compat.apply_cpu_compat()
    state = _compat_state()
    assert cpu_compat.apply_cpu_compat() == first and _compat_state() == state
    assert {"device_type", "fsdp_force_sum_reduction"} <= set(first)
    assert (titan_utils.device_type, titan_utils.device_module) == ("cpu", torch.cpu)
    wrapped = titan_fsdp.disable_fsdp_gradient_division
    assert not hasattr(wrapped.__wrapped__, "__wrapped__")  # wrapped once
    assert torch.distributed.Backend.default_device_backend_map[titan_utils.device_type] == "gloo"


@needs_cpu_only
def test_compat_lets_torchtitans_memory_monitor_run() -> None:
    from torchtitan.components.metrics import build_device_memory_monitor

    cpu_compat.apply_cpu_compat()
    monitor = build_device_memory_monitor()
    stats = monitor.get_peak_stats()
    assert monitor.device_capacity_gib > 0 and stats.max_reserved_gib > 0 and stats.num_ooms == 0
    monitor.reset_peak_stats()


@needs_cpu_only
def test_compat_forces_sum_reductions_in_torchtitans_fsdp(tmp_path: Path) -> None:
    import torch.distributed as dist
    import torchtitan.distributed.fsdp as titan_fsdp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    cpu_compat.apply_cpu_compat()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = build_model(make_spec())
        fully_shard(model, mesh=init_device_mesh("cpu", (1,)))
        titan_fsdp.disable_fsdp_gradient_division(model)
        groups = [g for m in model.modules() if isinstance(m, FSDPModule) for g in m._get_fsdp_state()._fsdp_param_groups]
        assert groups and all(g.force_sum_reduction_for_comms and g.gradient_divide_factor == 1.0 for g in groups)
    finally:
        dist.destroy_process_group()


FSDP_WORKER = textwrap.dedent("""
    import json, sys
    from runtime.cpu_compat import apply_cpu_compat
    apply_cpu_compat()
    import torch, torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torchtitan.distributed.fsdp import apply_fsdp_to_decoder
    from spec.model import ModelSpec
    from runtime.model_factory import build_model
    dist.init_process_group("gloo")
    spec = ModelSpec(**json.loads(sys.argv[1]))
    model = build_model(spec, seed=0)
    apply_fsdp_to_decoder(model, init_device_mesh("cpu", (2,)), torch.float32, torch.float32, pp_enabled=False)
    tokens = torch.randint(0, spec.vocab_size, (2, 32), generator=torch.Generator().manual_seed(dist.get_rank()))
    model(tokens).pow(2).mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    if dist.get_rank() == 0:
        print("FSDP-OK")
    dist.destroy_process_group()
""")


@pytest.mark.slow
@needs_cpu_only
def test_two_process_fsdp_over_gloo(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(FSDP_WORKER)
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), json.dumps(BASE)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and the workers it started
        stdout, stderr = proc.communicate()
    assert "FSDP-OK" in stdout, stderr[-3000:]


# --------------------------------------------------------------------------- Hugging Face export


def hf_reference_logits(tensors: dict[str, torch.Tensor], config: dict[str, Any], tokens: torch.Tensor) -> torch.Tensor:
    """A Hugging Face Llama / Qwen 3 forward pass written from their modeling code (rotate-half RoPE, GQA by
    repeating k/v heads, QK-norm per head before RoPE), reading only the exported files."""
    t = {k: v.float() for k, v in tensors.items()}
    heads, kv_heads, hd = config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]
    eps, (batch, seq) = config["rms_norm_eps"], tokens.shape

    def rms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    inv_freq = 1.0 / config["rope_theta"] ** (torch.arange(0, hd, 2).float() / hd)
    angles = torch.outer(torch.arange(seq).float(), inv_freq).repeat(1, 2)[:, None, :]
    cos, sin = angles.cos(), angles.sin()

    def rope(x: torch.Tensor) -> torch.Tensor:
        return x * cos + torch.cat([-x[..., hd // 2:], x[..., : hd // 2]], dim=-1) * sin

    x = t["model.embed_tokens.weight"][tokens]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms(x, t[p + "input_layernorm.weight"])
        q = (h @ t[p + "self_attn.q_proj.weight"].T).view(batch, seq, heads, hd)
        k = (h @ t[p + "self_attn.k_proj.weight"].T).view(batch, seq, kv_heads, hd)
        v = (h @ t[p + "self_attn.v_proj.weight"].T).view(batch, seq, kv_heads, hd)
        if p + "self_attn.q_norm.weight" in t:
            q, k = rms(q, t[p + "self_attn.q_norm.weight"]), rms(k, t[p + "self_attn.k_norm.weight"])
        q, k = rope(q).transpose(1, 2), rope(k).transpose(1, 2)
        k, v = (z.repeat_interleave(heads // kv_heads, dim=1) for z in (k, v.transpose(1, 2)))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(batch, seq, -1)
        x = x + a @ t[p + "self_attn.o_proj.weight"].T
        h = rms(x, t[p + "post_attention_layernorm.weight"])
        x = x + (F.silu(h @ t[p + "mlp.gate_proj.weight"].T) * (h @ t[p + "mlp.up_proj.weight"].T)) @ t[
            p + "mlp.down_proj.weight"].T
    head = t["model.embed_tokens.weight"] if config["tie_word_embeddings"] else t["lm_head.weight"]
    return rms(x, t["model.norm.weight"]) @ head.T


HF_CASES = {
    "llama3-tied-gqa": dict(tie_embeddings=True, rope_theta=10000.0),
    "llama3-untied-head-dim": dict(head_dim=24, n_kv_heads=1),
    "qwen3-per-head": dict(family="qwen3", qk_norm="per_head", head_dim=32),
}


@pytest.mark.parametrize("case", sorted(HF_CASES))
def test_hf_export_is_the_same_model_under_hf_names(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # importing it would fail: not needed
    spec = make_spec(**HF_CASES[case])
    model = build_model(spec, seed=3)
    out = export_hf(model, spec, tmp_path / "hf", extra_config={"eos_token_id": 2})
    config = json.loads((out / "config.json").read_text())
    tensors = load_file(str(out / "model.safetensors"))
    assert config["model_type"] == {"llama3": "llama", "qwen3": "qwen3"}[spec.family]
    assert (config["head_dim"], config["intermediate_size"], config["eos_token_id"]) == (
        spec.resolved_head_dim, spec.ffn_hidden, 2)
    assert ("lm_head.weight" in tensors) == (not spec.tie_embeddings)
    assert sum(t.numel() for t in tensors.values()) == param_counts(spec).total
    tokens = torch.randint(0, spec.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf_reference_logits(tensors, config, tokens), model(tokens), rtol=1e-4, atol=1e-4)
    reloaded = build_model(spec, seed=4)
    reloaded.load_state_dict(_adapter(spec, reloaded).from_hf(dict(tensors)))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()))


def test_hf_export_casts_to_the_spec_dtype(tmp_path: Path) -> None:
    spec = make_spec(dtype="bfloat16")
    out = export_hf(build_model(spec), spec, tmp_path / "hf")
    assert {t.dtype for t in load_file(str(out / "model.safetensors")).values()} == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_hf_config_rope_scaling() -> None:
    yarn = hf_config(make_spec(rope_scaling={"kind": "yarn", "factor": 2, "original_max_seq_len": 64}))
    assert yarn["rope_scaling"] == {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 64,
                                    "beta_fast": 32.0, "beta_slow": 1.0}
    assert hf_config(make_spec(**VARIANTS["llama3-rope-scaling"]))["rope_scaling"]["rope_type"] == "llama3"


@pytest.mark.parametrize("overrides, field", [
    (dict(family="olmo3", qk_norm="full"), "model.family"),
    (dict(qk_norm="per_head"), "model.qk_norm"),
    (dict(sliding_window={"size": 16}), "model.sliding_window"),
])
def test_hf_export_refuses_what_hf_cannot_express(overrides: dict[str, Any], field: str, tmp_path: Path) -> None:
    spec = make_spec(**overrides)
    with pytest.raises(NotImplementedError, match=field):
        export_hf(build_model(spec), spec, tmp_path / "hf")
