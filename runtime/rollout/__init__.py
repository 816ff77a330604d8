"""The RLVR rollout sidecar: a real vLLM server the trainer talks to over HTTP, and weight sync into it (issue 7).

- `sidecar`: the rollout job's entry, `run_sidecar(job)` (kind rlvr_rollout): serve the policy until the trainer is
  done, restart on request.
- `server`: one vLLM OpenAI-compatible server process (start, health, stop its process group).
- `client`: `RolloutClient`, the HTTP client (generate with token ids, log-probs and weight versions; pause,
  resume, weight version, health).
- `control`: the files the trainer and the sidecar share, and `SidecarHandle` (the trainer's side: connect,
  restart, stop).
- `weights`: the `WeightSync` interface and `FilesystemWeightSync` (safetensors + reload_weights);
  `nccl`: `NcclWeightSync` (GPU clusters; untested on CPU).

Nothing here imports torch at import time (the sidecar job runs without it; the trainer imports it anyway).
Test: `python -m pytest tests/runtime/test_rollout.py -q`.
"""
from __future__ import annotations

from runtime.rollout.client import RolloutClient, Sample, SidecarError, SidecarUnavailable, VersionSpan
from runtime.rollout.control import SidecarHandle
from runtime.rollout.sidecar import run_sidecar
from runtime.rollout.weights import FilesystemWeightSync, PushReport, WeightMismatch, WeightSync

__all__ = ["FilesystemWeightSync", "PushReport", "RolloutClient", "Sample", "SidecarError", "SidecarHandle",
           "SidecarUnavailable", "VersionSpan", "WeightMismatch", "WeightSync", "run_sidecar"]
