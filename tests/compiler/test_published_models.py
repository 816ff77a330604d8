"""A recipe with each published model's config gives exactly the published parameter count (FACTS.md)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from compiler.cli import main

PUBLISHED = {
    # name: (model block, published parameter count)
    "llama-3-1-8b": ("family: llama3, vocab_size: 128256, d_model: 4096, n_layers: 32, n_heads: 32, n_kv_heads: 8, "
                     "ffn_hidden: 14336, qk_norm: none, max_seq_len: 8192", 8_030_261_248),
    "qwen3-8b": ("family: qwen3, vocab_size: 151936, d_model: 4096, n_layers: 36, n_heads: 32, n_kv_heads: 8, head_dim: 128, "
                 "ffn_hidden: 12288, qk_norm: per_head, max_seq_len: 8192", 8_190_735_360),
    "olmo-3-7b": ("family: olmo3, vocab_size: 100278, d_model: 4096, n_layers: 32, n_heads: 32, n_kv_heads: 32, "
                  "ffn_hidden: 11008, qk_norm: full, max_seq_len: 8192, sliding_window: {size: 4096}", 7_298_011_136),
    "olmo-3-32b": ("family: olmo3, vocab_size: 100278, d_model: 5120, n_layers: 64, n_heads: 40, n_kv_heads: 8, head_dim: 128, "
                   "ffn_hidden: 27648, qk_norm: full, max_seq_len: 8192, sliding_window: {size: 4096}", 32_233_522_176),
}

RECIPE = """\
name: {name}
cluster: h100-80gb
model: {{{model}}}
data:
  sources: {{web: {{hf: org/web, tokens: 1000000000000}}}}
  mix: {{kind: fixed, weights: {{web: 1.0}}}}
stages:
  - {{name: pretrain, kind: pretrain, resources: {{nodes: 16}}, lr: 3.0e-4, global_batch_sequences: 512,
      seq_len: 4096, tokens: 1000000000, activation_checkpointing: full}}
"""


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_explain_gives_published_parameter_count(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, expected = PUBLISHED[name]
    path = tmp_path / f"{name}.yaml"
    path.write_text(RECIPE.format(name=name, model=model))
    assert main(["explain", str(path), "--json"]) == 0, capsys.readouterr().err
    data = json.loads(capsys.readouterr().out)
    assert data["model"]["params"] == expected
    assert data["model"]["non_embedding_params"] < expected
    assert data["stages"]["pretrain"]["memory_per_gpu_bytes"] > 0
    assert data["stages"]["pretrain"]["gpu_hours"] > 0
