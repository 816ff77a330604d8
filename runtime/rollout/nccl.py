"""NCCL weight sync for GPU clusters: the trainer broadcasts its weights straight into vLLM's GPU workers.

NOT YET RUN END TO END: written against vLLM's documented weight-transfer routes and its trainer engine (vllm
0.32/0.33 `vllm.distributed.weight_transfer.nccl_engine`). CPU tests cover the shared `WeightSync` interface, the
argument checks, the pre-push name/shape check and the sidecar's routes; `bench/gpu_weight_sync.py`, run on a lent
GPU machine, covers what that machine allows (see docs/notes/gpu-weight-sync.md): it had one GPU (NCCL refuses two
ranks on one device, and a trainer and a sidecar need one each) and no vllm (its CUDA wheel cannot be carried there).
Exercise it on two GPUs before relying on it.

The plan selects it with `rollout.weight_sync: nccl` (the compiler asks for GPUs on both sides and one engine);
the trainer then builds it with `from_plan`:

    sync = NcclWeightSync(handle, master_address="trainer-node", master_port=29600, world_size=1 + tp)
    sync.push(hf_state_dict(model, spec), version=step)   # CPU tensors are copied to this process's GPU first

How (vLLM's own protocol): the sidecar's server must be started with `--weight-transfer-config '{"backend":
"nccl"}'` (`ServerSettings(weight_transfer="nccl")`). On the first push the trainer (rank 0) and the sidecar's
workers (ranks 1..world_size-1) rendezvous over a TCPStore at master_address:master_port
(`/init_weight_transfer_engine`); each push is `/start_weight_update`, `/update_weights` {names, dtype_names, shapes}
while rank 0 broadcasts the tensors in that order, then `/finish_weight_update` {weight_version}; then the prefix
cache is reset. The trainer process needs `vllm` importable (its NCCL communicator); the trainer environment here
does not have it (vllm pins another torch), so `push` says so in one line.

A restart (the sidecar died) starts a server from the served model and re-sends the latest weights over a new NCCL
group, so the weights of the latest push stay referenced until the next one.
"""
from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Mapping

from runtime.net import free_port
from runtime.rollout.weights import Manifest, PushReport, check_weights, complete_untied

if TYPE_CHECKING:
    import torch

    from runtime.rollout.control import SidecarHandle


class NcclUnavailable(RuntimeError):
    """This process cannot drive an NCCL weight transfer (no vllm, no CUDA)."""


class RouteClient:
    """vLLM's `VLLMWeightSyncClient` protocol over our HTTP client (a timeout on every call)."""

    def __init__(self, sidecar: SidecarHandle, timeout: float = 600.0):
        self.sidecar, self.timeout = sidecar, timeout

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        self.sidecar.client.post("/init_weight_transfer_engine", {"init_info": init_info}, timeout=self.timeout)

    def shutdown_weight_transfer_engine(self) -> None:
        self.sidecar.client.post("/shutdown_weight_transfer_engine", timeout=self.timeout)

    def start_weight_update(self) -> None:
        self.sidecar.client.post("/start_weight_update", timeout=self.timeout)

    def update_weights(self, update_info: dict[str, Any] | list[dict[str, Any]]) -> None:
        self.sidecar.client.post("/update_weights", {"update_info": update_info}, timeout=self.timeout)

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        body = {} if weight_version is None else {"weight_version": weight_version}
        self.sidecar.client.post("/finish_weight_update", body, timeout=self.timeout)


class NcclWeightSync:
    """`WeightSync` over NCCL (see the module docstring). `world_size` = 1 (the trainer's rank 0) + the sidecar's
    GPU workers (its tensor_parallel size)."""

    def __init__(self, sidecar: SidecarHandle, *, master_address: str, master_port: int, world_size: int,
                 packed: bool = True, timeout: float = 600.0):
        if not master_address:
            raise ValueError("master_address: the trainer's address the sidecar's workers can reach")
        if not 1024 <= int(master_port) <= 65535:
            raise ValueError(f"master_port must be in 1024..65535 (got {master_port})")
        if int(world_size) < 2:
            raise ValueError(f"world_size counts the trainer and the sidecar's workers: at least 2 (got {world_size})")
        self.sidecar, self.master_address, self.master_port = sidecar, master_address, int(master_port)
        self.world_size, self.packed, self.timeout = int(world_size), packed, timeout
        self.manifest: Manifest = sidecar.manifest()
        self.engine: Any = None
        self.latest_weights: Mapping[str, torch.Tensor] | None = None
        self.latest_version = int(sidecar.info.get("weight_version", 0))

    def check(self, weights: Mapping[str, torch.Tensor]) -> None:
        check_weights(self.manifest, complete_untied(self.manifest, weights))

    @staticmethod
    def _vllm_engine() -> tuple[Any, Any]:
        """vLLM's trainer-side engine classes, or NcclUnavailable in one line (no vllm, no CUDA)."""
        try:
            import torch
            from vllm.distributed.weight_transfer.nccl_engine import (
                NCCLTrainerInitInfo, NCCLTrainerWeightTransferEngine)
        except ImportError as exc:
            raise NcclUnavailable(f"NCCL weight sync needs vllm in the trainer's environment ({exc}); "
                                  "use FilesystemWeightSync") from None
        if not torch.cuda.is_available():
            raise NcclUnavailable("NCCL weight sync needs CUDA; use FilesystemWeightSync on CPU")
        return NCCLTrainerInitInfo, NCCLTrainerWeightTransferEngine

    def _connect(self, sent: Mapping[str, torch.Tensor]) -> Any:
        init_info, engine = self._vllm_engine()
        info = init_info(master_address=self.master_address, master_port=self.master_port,
                         world_size=self.world_size, packed=self.packed, rank=0)
        return engine.trainer_init(info, client=RouteClient(self.sidecar, self.timeout), source=dict_source(sent))

    @classmethod
    def from_plan(cls, sidecar: SidecarHandle, rl: Mapping[str, Any]) -> NcclWeightSync:
        """The trainer's sync for the plan's `rl` block: this host as the rendezvous, a free port, one rank per
        sidecar GPU (`sidecar_tensor_parallel`) besides the trainer's."""
        return cls(sidecar, master_address=socket.getfqdn(), master_port=free_port(host=""),
                   world_size=1 + int(rl.get("sidecar_tensor_parallel", 1)))

    def push(self, weights: Mapping[str, torch.Tensor], version: int) -> PushReport:
        weights = complete_untied(self.manifest, weights)
        check_weights(self.manifest, weights)
        start = time.perf_counter()
        if self.engine is None:
            self._vllm_engine()  # fails in one line before anything is copied
        sent = on_gpu(weights)
        if self.engine is None:
            self.engine = self._connect(sent)
        self.engine.source = dict_source(sent)
        self.engine.send_weights()
        self.sidecar.client.reset_prefix_cache()
        self.sidecar.client.set_weight_version(version)
        self.latest_weights, self.latest_version = weights, int(version)
        return PushReport(int(version), folder=None, write_s=0.0, update_s=time.perf_counter() - start)

    def restart(self) -> float:
        start = time.perf_counter()
        self.sidecar.restart(None, self.latest_version)
        self.engine = None  # the old group died with the old server
        if self.latest_weights is not None:
            self.push(self.latest_weights, self.latest_version)
        return time.perf_counter() - start


def on_gpu(weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors NCCL can send: on this process's current GPU (the trainer's weights arrive on CPU from
    `hf_state_dict`; the engine's source holds the copy until the next push replaces it), contiguous, a tied pair
    still one tensor."""
    import torch

    device = torch.device("cuda", torch.cuda.current_device())
    copies: dict[int, torch.Tensor] = {}
    out = {}
    for name, t in weights.items():
        key = id(t)
        if key not in copies:
            copies[key] = t.detach().to(device, non_blocking=True).contiguous()
        out[name] = copies[key]
    torch.cuda.synchronize(device)
    return out


def dict_source(weights: Mapping[str, torch.Tensor]) -> Any:
    """vLLM's `WeightSource` over a name -> tensor mapping (Hugging Face names, on the trainer's GPU)."""
    from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource

    class DictSource(WeightSource):
        def metadata(self) -> list[Any]:
            return [ParamMeta(name, t.dtype, tuple(t.shape)) for name, t in weights.items()]

        def __iter__(self) -> Iterator[tuple[str, Any]]:
            return iter(weights.items())

    return DictSource()

