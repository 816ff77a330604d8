"""Export a torchtitan model built by `runtime.model_factory` as a Hugging Face folder, without `transformers`.

Use:

    from runtime.hf_export import export_hf
    export_hf(model, spec, "out/hf", extra_config={"bos_token_id": 1, "eos_token_id": 2})
    # out/hf/config.json + out/hf/model.safetensors (HF tensor names, spec.dtype)

Test: `python -m pytest tests/runtime/test_model_factory.py -q -k hf`.

Tensor names come from torchtitan 0.3.0's own state-dict adapters (`Llama3StateDictAdapter.to_hf`, which also
permutes wq/wk from torchtitan's interleaved RoPE to HF's rotate-half layout, and `Qwen3StateDictAdapter.to_hf`).
config.json is written by hand (LlamaForCausalLM / Qwen3ForCausalLM fields), so `transformers` is not needed.

Not exported (NotImplementedError): family olmo3 (torchtitan has no Olmo 3 adapter), QK-norm on a Llama
(HF Llama has none) or anything but per-head QK-norm on a Qwen 3, and sliding windows (HF Llama has none;
HF Qwen 3's `max_window_layers` does not express the recipe's layer pattern).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from torchtitan.models.common.decoder import Decoder
from torchtitan.models.llama3 import Llama3StateDictAdapter
from torchtitan.models.qwen3 import Qwen3StateDictAdapter
from torchtitan.protocols.state_dict_adapter import StateDictAdapter

from spec.model import ModelSpec

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_HF = {
    "llama3": ("LlamaForCausalLM", "llama", Llama3StateDictAdapter, "none"),
    "qwen3": ("Qwen3ForCausalLM", "qwen3", Qwen3StateDictAdapter, "per_head"),
}


def _check_exportable(spec: ModelSpec) -> None:
    if spec.family not in _HF:
        raise NotImplementedError(f"model.family: no Hugging Face export for {spec.family!r} "
                                  "(torchtitan 0.3.0 has no state-dict adapter for it)")
    qk_norm = _HF[spec.family][3]
    if spec.qk_norm != qk_norm:
        raise NotImplementedError(f"model.qk_norm: {spec.qk_norm!r} has no Hugging Face {spec.family} equivalent "
                                  f"(expected {qk_norm!r})")
    if spec.sliding_window is not None:
        raise NotImplementedError("model.sliding_window: not expressible in a Hugging Face Llama/Qwen3 config")


def _adapter(spec: ModelSpec, model: Decoder) -> StateDictAdapter:
    return _HF[spec.family][2](model.config, None)


def hf_state_dict(model: Decoder, spec: ModelSpec) -> dict[str, torch.Tensor]:
    """The model's weights under Hugging Face names, cast to `spec.dtype`, contiguous, on CPU.

    Checks that every torchtitan tensor got a name (the adapters silently drop keys they do not know).
    """
    _check_exportable(spec)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    hf = _adapter(spec, model).to_hf(dict(state))
    expected = len(state) - (1 if spec.tie_embeddings else 0)
    if len(hf) != expected:
        raise ValueError(f"state-dict adapter mapped {len(hf)} of {expected} tensors")
    dtype = _DTYPES[spec.dtype]
    return {name: t.to(device="cpu", dtype=dtype).contiguous() for name, t in hf.items()}


def _rope_scaling(spec: ModelSpec) -> dict[str, Any] | None:
    s = spec.rope_scaling
    if s is None:
        return None
    if s.kind == "llama3":
        return {"rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
                "high_freq_factor": s.high_freq_factor, "original_max_position_embeddings": s.original_max_seq_len}
    return {"rope_type": "yarn", "factor": s.factor, "original_max_position_embeddings": s.original_max_seq_len,
            "beta_fast": s.beta_fast, "beta_slow": s.beta_slow}


def hf_config(spec: ModelSpec, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """config.json for LlamaForCausalLM or Qwen3ForCausalLM; `extra` (e.g. bos/eos token ids) is merged last."""
    _check_exportable(spec)
    architecture, model_type = _HF[spec.family][:2]
    config: dict[str, Any] = {
        "architectures": [architecture],
        "model_type": model_type,
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.d_model,
        "intermediate_size": spec.ffn_hidden,
        "num_hidden_layers": spec.n_layers,
        "num_attention_heads": spec.n_heads,
        "num_key_value_heads": spec.n_kv_heads,
        "head_dim": spec.resolved_head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": spec.max_seq_len,
        "rms_norm_eps": spec.norm_eps,
        "rope_theta": spec.rope_theta,
        "rope_scaling": _rope_scaling(spec),
        "tie_word_embeddings": spec.tie_embeddings,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": spec.dtype,
    }
    if spec.family == "llama3":
        config.update(mlp_bias=False, pretraining_tp=1)
    else:
        config.update(use_sliding_window=False, sliding_window=None, max_window_layers=spec.n_layers)
    config.update(extra or {})
    return config


def export_hf(model: Decoder, spec: ModelSpec, out_dir: str | Path, *, extra_config: dict[str, Any] | None = None) -> Path:
    """Write `config.json` and `model.safetensors` for `model` into `out_dir` (created); returns the folder."""
    out = Path(out_dir)
    tensors = hf_state_dict(model, spec)
    config = hf_config(spec, extra_config)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out
