"""Run torchtitan 0.3.0's trainer code on a CPU-only machine: the few patches it needs, nothing else.

Use, first thing in a process that runs torchtitan's trainer, metrics or FSDP without CUDA (before importing
torchtitan modules where possible; modules imported earlier are fixed up too):

    from runtime.cpu_compat import apply_cpu_compat
    patched = apply_cpu_compat()        # e.g. ["device_type", "torch.cpu.get_device_name", ...]

Test: `python -m pytest tests/runtime/test_model_factory.py -q -k compat`.

Each patch was seen to be needed here (torch 2.14.1, torchtitan 0.3.0, no GPU), and each is a no-op when CUDA
is available: `apply_cpu_compat()` then returns [] and touches nothing. Calling it again changes nothing and
returns the same names.

- device_type: torchtitan decides its device at import of `torchtitan/tools/utils.py`
  (`_get_available_device_type() or "cuda"`), so a CPU-only machine gets "cuda" and `torch.cuda`, and
  `init_distributed` picks NCCL. Rebinding `device_type`/`device_module` to "cpu"/`torch.cpu` there (and in
  the torchtitan modules that already copied them with `from ... import`) makes it pick gloo.
- torch.cpu.*: the metrics code (`components/metrics.py`, `DeviceMemoryMonitor`) calls `get_device_name`,
  `get_device_properties(...).total_memory`, `memory_stats`, `reset_peak_memory_stats` and `empty_cache`,
  which `torch.cpu` lacks. Stubs: the machine's name and RAM, peak RSS as the peak memory, no-ops.
- fsdp_force_sum_reduction: torchtitan sets FSDP's gradient divide factor to 1, which FSDP turns into a
  PREMUL_SUM reduce-scatter; gloo rejects it with 2+ processes ("Cannot use ReduceOp.PREMUL_SUM with Gloo").
  `set_force_sum_reduction_for_comms(True)` on every FSDP module makes it a plain SUM (numerically the same:
  the factor is 1). Patched into `torchtitan.distributed.fsdp.disable_fsdp_gradient_division`, which
  `apply_fsdp_to_decoder` calls once all blocks are sharded.
- eager_block_mask: `Decoder.get_attention_masks` (called by the Trainer for every batch with `positions`)
  builds its document BlockMask with a `torch.compile`d `create_block_mask`, which costs 6-19 s of inductor
  compilation per process on CPU (and recompiles when shapes change). On CPU the mask only feeds
  `DenseMaskAttention`, so torchtitan's `create_attention_mask` is rebound (in `models.common.attention` and in
  `models.common.decoder`, which imported it by name) to the eager `create_block_mask`: same BlockMask, no
  compile. Added for the trainer (runtime/train.py).
- pg_timeouts_barrier: after the first step the Trainer calls `distributed.utils.set_pg_timeouts`, which runs
  `barrier(device_ids=[device_module.current_device()])`; `torch.cpu.current_device()` is the string "cpu",
  which `BarrierOptions.device_ids` rejects (TypeError, 1 or more processes). The patched function does a
  plain `barrier()` and then sets the same timeouts.

Not patched here, on purpose:
- FlexAttention has no backward on CPU and needs a BlockMask even when causal: `runtime.model_factory` builds
  CPU models with `DenseMaskAttention` (BlockMask -> dense SDPA mask) instead, so no patch is needed.
- Left for the trainer work (seen or expected there, not needed to build or run a model): the profiler's memory snapshots (`device_module.memory._record_memory_history`) have no CPU
  equivalent: keep `profiling.enable_memory_snapshot` off; `torch.compile` of the model on CPU is untested.
"""
from __future__ import annotations

import os
import platform
import resource
import sys
from types import SimpleNamespace
from typing import Any, Callable

import torch

_applied: list[str] = []


def apply_cpu_compat() -> list[str]:
    """Apply the CPU patches (once) and return the names of those in effect; [] when CUDA is available."""
    if torch.cuda.is_available():
        return []
    if not _applied:
        _applied.extend(_force_cpu_device())
        _applied.extend(_stub_torch_cpu())
        _applied.extend(_force_sum_reduction())
        _applied.extend(_eager_block_mask())
        _applied.extend(_pg_timeouts_plain_barrier())
    return list(_applied)


# --------------------------------------------------------------------------- device detection


def _force_cpu_device() -> list[str]:
    """Make torchtitan's device globals "cpu"/torch.cpu, in tools.utils and wherever they were copied."""
    import torchtitan.tools.utils as titan_utils

    stale = {"device_type": titan_utils.device_type, "device_module": titan_utils.device_module}
    fresh = {"device_type": "cpu", "device_module": torch.cpu}
    for name, module in list(sys.modules.items()):
        if not name.startswith("torchtitan") or module is None:
            continue
        for attr, old in stale.items():
            if getattr(module, attr, None) is old:
                setattr(module, attr, fresh[attr])
    return ["device_type"]


# --------------------------------------------------------------------------- torch.cpu stubs


def _total_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _get_device_name(device: Any = None) -> str:
    return platform.processor() or platform.machine() or "cpu"


def _get_device_properties(device: Any = None) -> SimpleNamespace:
    return SimpleNamespace(name=_get_device_name(), total_memory=_total_memory())


def _memory_stats(device: Any = None) -> dict[str, int]:
    """CUDA-style keys the metrics code reads; peak resident set size (Linux: KiB) stands for both peaks."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"active_bytes.all.peak": peak, "reserved_bytes.all.peak": peak, "num_alloc_retries": 0, "num_ooms": 0}


def _no_op(*args: Any, **kwargs: Any) -> None:
    return None


_CPU_STUBS: dict[str, Callable[..., Any]] = {
    "get_device_name": _get_device_name,
    "get_device_properties": _get_device_properties,
    "memory_stats": _memory_stats,
    "reset_peak_memory_stats": _no_op,
    "empty_cache": _no_op,
}


def _stub_torch_cpu() -> list[str]:
    """Add the torch.cpu functions the metrics code calls, only where torch lacks them."""
    added = []
    for name, stub in _CPU_STUBS.items():
        if not hasattr(torch.cpu, name):
            setattr(torch.cpu, name, stub)
            added.append(f"torch.cpu.{name}")
    return added


# --------------------------------------------------------------------------- FSDP over gloo


def _force_sum_reduction() -> list[str]:
    """Wrap torchtitan's `disable_fsdp_gradient_division` to also force SUM reductions (gloo has no PREMUL_SUM)."""
    import torchtitan.distributed.fsdp as titan_fsdp
    from torch.distributed.fsdp import FSDPModule

    original = titan_fsdp.disable_fsdp_gradient_division

    def disable_fsdp_gradient_division(model: torch.nn.Module) -> None:
        original(model)
        for module in model.modules():
            if isinstance(module, FSDPModule):
                module.set_force_sum_reduction_for_comms(True)

    disable_fsdp_gradient_division.__wrapped__ = original  # type: ignore[attr-defined]
    titan_fsdp.disable_fsdp_gradient_division = disable_fsdp_gradient_division
    return ["fsdp_force_sum_reduction"]


# --------------------------------------------------------------------------- document masks without compile


def _eager_block_mask() -> list[str]:
    """Rebind torchtitan's `create_attention_mask` (compiled `create_block_mask`) to the eager function."""
    import torchtitan.models.common.attention as titan_attention
    import torchtitan.models.common.decoder as titan_decoder
    from torch.nn.attention.flex_attention import create_block_mask

    original = titan_attention.create_attention_mask

    def create_attention_mask(*args: Any, **kwargs: Any) -> Any:
        return create_block_mask(*args, **kwargs)

    create_attention_mask.__wrapped__ = original  # type: ignore[attr-defined]
    for module in (titan_attention, titan_decoder):
        if getattr(module, "create_attention_mask", None) is original:
            module.create_attention_mask = create_attention_mask
    return ["eager_block_mask"]


# --------------------------------------------------------------------------- barrier without device ids


def _pg_timeouts_plain_barrier() -> list[str]:
    """Replace `set_pg_timeouts` with one whose barrier takes no CUDA device ids (gloo on CPU)."""
    import torch.distributed as dist
    import torchtitan.distributed.utils as titan_dist_utils

    original = titan_dist_utils.set_pg_timeouts

    def set_pg_timeouts(timeout: Any, parallel_dims: Any) -> None:
        dist.barrier()
        groups = [mesh.get_group() for mesh in parallel_dims.get_all_one_dimensional_meshes().values()] + [None]
        for group in groups:
            dist.distributed_c10d._set_pg_timeout(timeout, group) if not hasattr(dist, "set_timeout") \
                else dist.set_timeout(timeout, group)

    set_pg_timeouts.__wrapped__ = original  # type: ignore[attr-defined]
    titan_dist_utils.set_pg_timeouts = set_pg_timeouts
    return ["pg_timeouts_barrier"]
