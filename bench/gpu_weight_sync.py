"""The RL weight path on a GPU machine: what runs there, measured. Needs CUDA; prints its figures.

    python bench/gpu_weight_sync.py                 # the 7B recipe's model (recipes/olmo3-7b-think.yaml), bf16
    python bench/gpu_weight_sync.py --layers 2      # a quick run

1. The machine: torch, CUDA, NCCL, GPUs, and whether `vllm` imports (NcclWeightSync's trainer side needs it).
2. `NcclWeightSync.push` as far as this machine lets it go: the pre-push name/shape check, then vLLM's engine or
   the one-line NcclUnavailable; and `on_gpu`, the copy a push makes of the trainer's CPU weights (`hf_state_dict`
   gathers them on CPU): seconds, GB/s, bitwise equal, a tied pair still one tensor on the GPU.
3. An NCCL broadcast of the same weights from rank 0 to rank 1, tensor by tensor in manifest order: the transport
   vLLM's NCCL engine uses, without vLLM. Each rank takes its own GPU; with one GPU both ranks share it, which
   NCCL refuses, and the script prints NCCL's error instead of figures.
4. `write_weights` (FilesystemWeightSync's writer) from CUDA tensors: seconds, GB/s, read back bitwise equal.
5. The GRPO loss (runtime.rl.loss) on CUDA against CPU on the same inputs: the loss, its gradient, the TIS/MIS
   weights.

Only torch and safetensors besides this repository (no torchtitan, pydantic or vllm), so it runs on a bare CUDA
image. Findings: docs/notes/gpu-weight-sync.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.net import free_port  # noqa: E402
from runtime.rl import loss  # noqa: E402
from runtime.rollout.nccl import NcclUnavailable, NcclWeightSync, on_gpu  # noqa: E402
from runtime.rollout.weights import DTYPE_CODES, Manifest, WeightMismatch, write_weights  # noqa: E402

GB = 1e9


def llama_manifest(a: argparse.Namespace) -> Manifest:
    """Hugging Face Llama tensor names and shapes (untied head), in the order the export writes them."""
    hd = a.d_model // a.heads
    shapes: dict[str, list[int]] = {"model.embed_tokens.weight": [a.vocab, a.d_model]}
    for i in range(a.layers):
        p = f"model.layers.{i}."
        shapes |= {p + "self_attn.q_proj.weight": [a.heads * hd, a.d_model],
                   p + "self_attn.k_proj.weight": [a.kv_heads * hd, a.d_model],
                   p + "self_attn.v_proj.weight": [a.kv_heads * hd, a.d_model],
                   p + "self_attn.o_proj.weight": [a.d_model, a.heads * hd],
                   p + "mlp.gate_proj.weight": [a.ffn, a.d_model], p + "mlp.up_proj.weight": [a.ffn, a.d_model],
                   p + "mlp.down_proj.weight": [a.d_model, a.ffn],
                   p + "input_layernorm.weight": [a.d_model], p + "post_attention_layernorm.weight": [a.d_model]}
    shapes |= {"model.norm.weight": [a.d_model], "lm_head.weight": [a.vocab, a.d_model]}
    return {n: {"dtype": DTYPE_CODES["bfloat16"], "shape": s} for n, s in shapes.items()}


def make_weights(manifest: Manifest, device: str, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(seed)
    return {n: torch.randn(m["shape"], generator=gen, device=device, dtype=torch.float32).to(torch.bfloat16)
            for n, m in manifest.items()}


def nbytes(weights: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in weights.values())


def say(section: str, text: str) -> None:
    print(f"[{section}] {text}", flush=True)


# --------------------------------------------------------------------------- 1. the machine


def machine() -> int:
    gpus = torch.cuda.device_count()
    nccl = ".".join(map(str, torch.cuda.nccl.version())) if gpus else "-"
    say("machine", f"torch {torch.__version__}, CUDA {torch.version.cuda}, NCCL {nccl}, {gpus} GPU(s): "
                   + ", ".join(torch.cuda.get_device_name(i) for i in range(gpus)))
    try:
        import vllm  # noqa: F401
        say("machine", f"vllm {vllm.__version__} imports")
    except ImportError as exc:
        say("machine", f"vllm does not import ({exc})")
    return gpus


# --------------------------------------------------------------------------- 2. NcclWeightSync up to vLLM


class ManifestOnly:
    """What NcclWeightSync reads from a SidecarHandle before it talks to a server: the served model's manifest.
    Not a vLLM stand-in: every call that would reach the server fails."""

    def __init__(self, manifest: Manifest):
        self._manifest, self.info = manifest, {"weight_version": 0}

    def manifest(self) -> Manifest:
        return self._manifest

    @property
    def client(self) -> Any:
        raise RuntimeError("no sidecar in this check")


def nccl_sync(manifest: Manifest, cpu: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    sync = NcclWeightSync(ManifestOnly(manifest), master_address=socket.getfqdn(), master_port=29655, world_size=2)
    try:
        sync.push({n: t for n, t in cpu.items() if n != "model.norm.weight"}, version=1)
        say("nccl-sync", "FAILED: a push missing a tensor was not refused")
    except WeightMismatch as exc:
        say("nccl-sync", f"pre-push check refuses a push missing a tensor: {exc}")
    try:
        NcclWeightSync._vllm_engine()
        say("nccl-sync", "vLLM's trainer engine imports; no sidecar here to push to")
    except NcclUnavailable:
        try:
            sync.push(cpu, version=1)
        except NcclUnavailable as exc:
            say("nccl-sync", f"push stops before any copy, in one line: {exc}")

    size = nbytes(cpu)
    tied = dict(cpu, **{"lm_head.weight": cpu["model.embed_tokens.weight"]})
    torch.cuda.synchronize()
    start = time.perf_counter()
    sent = on_gpu(tied)
    seconds = time.perf_counter() - start
    same = all(torch.equal(sent[n], reference[n]) for n in reference if n != "lm_head.weight")
    one = sent["lm_head.weight"].data_ptr() == sent["model.embed_tokens.weight"].data_ptr()
    say("on_gpu", f"{size / GB:.2f} GB of pageable CPU weights to the GPU in {seconds:.2f} s "
                  f"({size / GB / seconds:.1f} GB/s); bitwise equal: {same}; tied pair one GPU tensor: {one}")
    del sent


# --------------------------------------------------------------------------- 3. NCCL broadcast, rank 0 -> rank 1


def broadcast_rank(rank: int, gpus: int, port: int, a: argparse.Namespace, results: Any) -> None:
    try:
        device = torch.device("cuda", rank % gpus)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                                timeout=datetime.timedelta(seconds=60))
        dist.barrier()  # NCCL's communicator starts here: two ranks on one GPU fail now, before any allocation
        manifest = llama_manifest(a)
        if rank == 0:
            weights = make_weights(manifest, str(device), seed=1)
        else:
            weights = {n: torch.empty(m["shape"], dtype=torch.bfloat16, device=device) for n, m in manifest.items()}
        dist.barrier()
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        for name in manifest:  # the manifest's order on both sides, as vLLM's engine sends update_info's names
            dist.broadcast(weights[name], src=0)
        torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        same = None
        if rank == 1:
            expected = make_weights(manifest, str(device), seed=1)
            same = all(torch.equal(weights[n], expected[n]) for n in manifest)
        results.put((rank, "ok", seconds, nbytes(weights), same))
        dist.destroy_process_group()
    except BaseException as exc:  # noqa: BLE001 - the parent prints whatever NCCL said
        results.put((rank, "error", f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}", 0, None))


def nccl_broadcast(gpus: int, a: argparse.Namespace) -> None:
    port = free_port()
    context = mp.get_context("spawn")
    results = context.Queue()
    procs = [context.Process(target=broadcast_rank, args=(r, gpus, port, a, results)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
        if p.is_alive():
            p.kill()
    got = []
    while not results.empty():
        got.append(results.get())
    placement = "both ranks on GPU 0" if gpus < 2 else "GPU 0 -> GPU 1"
    for rank, status, seconds, size, same in sorted(got):
        if status == "ok":
            extra = f"; received bitwise equal: {same}" if rank == 1 else ""
            say("nccl-broadcast", f"rank {rank} ({placement}): {size / GB:.2f} GB in {seconds:.2f} s "
                                  f"({size / GB / seconds:.1f} GB/s){extra}")
        else:
            say("nccl-broadcast", f"rank {rank} ({placement}): {seconds}")
    if len(got) < 2:
        say("nccl-broadcast", f"{2 - len(got)} rank(s) said nothing within 240 s (killed)")


# --------------------------------------------------------------------------- 4. the filesystem writer


def filesystem(manifest: Manifest, gpu: dict[str, torch.Tensor]) -> None:
    from safetensors import safe_open

    size = nbytes(gpu)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        model_dir = Path(tmp) / "model"
        model_dir.mkdir()
        (model_dir / "config.json").write_text("{}\n")
        torch.cuda.synchronize()
        start = time.perf_counter()
        folder = write_weights(gpu, Path(tmp) / "v00000001", manifest, model_dir)
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
            same = all(torch.equal(f.get_tensor(n), gpu[n].cpu()) for n in manifest)
        read_s = time.perf_counter() - start
    say("filesystem", f"write_weights from CUDA: {size / GB:.2f} GB in {seconds:.2f} s ({size / GB / seconds:.2f} GB/s); "
                      f"read back and compared in {read_s:.2f} s: bitwise equal: {same}")


# --------------------------------------------------------------------------- 5. the loss on CUDA vs CPU


def loss_on(device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    groups, size, length, vocab = 4, 8, 24, 512
    batch = groups * size
    logits = torch.randn(batch, length, vocab, generator=gen).to(device).requires_grad_()
    targets = torch.randint(0, vocab, (batch, length), generator=gen).to(device)
    mask = (torch.rand(batch, length, generator=gen) > 0.2).to(device)
    rewards = (torch.rand(groups, size, generator=gen) > 0.6).double().to(device)
    rewards[0] = 1.0  # one group without signal
    sidecar = torch.randn(batch, length, generator=gen).mul(0.05).to(device)
    ref = torch.randn(batch, length, generator=gen).mul(0.05).to(device)
    logp = loss.token_logprobs(logits, targets, temperature=0.9)
    old = logp.detach()
    adv, zero = loss.group_advantages(rewards)
    out: dict[str, torch.Tensor] = {"adv": adv, "zero": zero}
    for kind in ("tis", "mis"):
        for level in ("token", "sequence"):
            c = loss.correction(old, old + sidecar, mask, kind=kind, level=level, cap=1.05, low=0.95)
            out[f"{kind}-{level}"] = c.weights
    c = loss.correction(old, old + sidecar, mask, kind="tis", level="token", cap=1.05)
    total, _ = loss.grpo_token_loss(logp, old, adv.reshape(-1), mask, c.weights, clip_low=0.2, clip_high=0.28,
                                    kl_coef=0.05, ref_logp=old + ref)
    total.backward()
    out["loss"], out["grad"] = total.detach(), logits.grad
    return {k: v.detach().double().cpu() for k, v in out.items()}


def loss_check() -> None:
    try:
        cpu, cuda = loss_on("cpu"), loss_on("cuda")
    except Exception:
        say("loss", "FAILED on CUDA:\n" + traceback.format_exc())
        return
    diffs = {k: float((cpu[k] - cuda[k]).abs().max()) for k in cpu}
    say("loss", "CUDA vs CPU, max |diff|: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items())
        + f" (loss {float(cpu['loss']):.4f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=100278)
    parser.add_argument("--d-model", type=int, default=4096)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--ffn", type=int, default=11008)
    a = parser.parse_args()
    gpus = machine()
    if gpus == 0:
        raise SystemExit("bench/gpu_weight_sync.py: no CUDA device here")
    manifest = llama_manifest(a)
    loss_check()
    start = time.perf_counter()
    gpu = make_weights(manifest, "cuda", seed=0)
    cpu = {n: t.cpu() for n, t in gpu.items()}
    say("weights", f"{len(manifest)} tensors, {nbytes(gpu) / GB:.2f} GB bf16 "
                   f"({a.layers} layers, d_model {a.d_model}, vocab {a.vocab}); made in {time.perf_counter() - start:.1f} s")
    nccl_sync(manifest, cpu, gpu)
    filesystem(manifest, gpu)
    del gpu, cpu
    torch.cuda.empty_cache()
    nccl_broadcast(gpus, a)


if __name__ == "__main__":
    main()
