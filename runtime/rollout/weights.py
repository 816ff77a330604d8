"""Weight sync from the trainer to the rollout sidecar, behind one interface (`WeightSync`).

    sync = FilesystemWeightSync(handle, trainer_out / "rollout-weights")   # handle: control.SidecarHandle
    report = sync.push(hf_state_dict(model, spec), version=step)           # checked, written, reloaded, labelled
    sync.restart()                                                         # a new server from the latest push

`FilesystemWeightSync` (CPU and any cluster with a shared filesystem): the trainer writes the weights as one
safetensors file with Hugging Face names into a new folder, atomically (a temporary folder renamed into place: the
sidecar never reads half a push), beside the served model's config.json and tokenizer files, so the folder is a whole
model a restarted server can start from. The sidecar reloads them in place (`reload_weights` through
`/collective_rpc`: vLLM's CPU backend repacks linear weights, so `load_weights` directly does not work), resets its
prefix cache (its KV entries came from the old weights) and labels the version (`/update_weight_version`).

A tied-embedding model is served untied on CPU (`untie_for_serving`: vLLM's CPU backend does not refresh a tied
head on reload); pushes then carry the head too (`complete_untied`), which the trainer need not know about.

A failed reload leaves vLLM's engine broken, so names, shapes and dtypes are checked against the served model's
manifest (`weights.json`, which the sidecar writes from its own export) BEFORE anything is written: a mismatch raises
`WeightMismatch` and the engine keeps serving the old weights. If the reload itself fails, the trainer's state is
untouched: `push` retries once (when the server still answers), then restarts the sidecar from the new folder.
Only the latest `keep` pushes are kept on disk.

`NcclWeightSync` (runtime/rollout/nccl.py): GPU clusters, broadcast through vLLM's weight-transfer routes.
`weight_sync_for(handle, rl, out)` picks one by the plan's `rl.weight_sync` (`rollout.weight_sync` in the recipe).
Reading a manifest needs only the standard library (safetensors headers); writing needs torch and safetensors.
Test: `python -m pytest tests/runtime/test_rollout.py -q`.
"""
from __future__ import annotations

import json
import shutil
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Protocol

from runtime.outputs import atomic_write_json
from runtime.rollout.client import SidecarError, SidecarUnavailable

if TYPE_CHECKING:
    import torch

    from runtime.rollout.control import SidecarHandle

Manifest = dict[str, dict[str, Any]]  # name -> {"dtype": "F32", "shape": [..]}
WEIGHTS_FILE = "model.safetensors"
MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json")
LATEST = "latest.json"
EMBEDDING = "model.embed_tokens.weight"
# torch dtype name -> safetensors dtype code
DTYPE_CODES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16", "float64": "F64", "int64": "I64",
               "int32": "I32", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


class WeightMismatch(ValueError):
    """A push whose tensor names or shapes differ from the served model's; nothing was sent."""


@dataclass(frozen=True)
class PushReport:
    version: int
    folder: Path | None  # where the weights were written (None: sent over the network)
    write_s: float
    update_s: float  # reload + prefix-cache reset + version label, as the trainer waited for it
    restarted: bool = False
    retries: int = 0


class WeightSync(Protocol):
    """How new weights get from the trainer into the rollout engine."""

    def check(self, weights: Mapping[str, torch.Tensor]) -> None:
        """Raise WeightMismatch (having sent nothing) unless names and shapes match the served model's."""

    def push(self, weights: Mapping[str, torch.Tensor], version: int) -> PushReport:
        """Make the sidecar generate with `weights` (Hugging Face names), labelled `version`."""

    def restart(self) -> float:
        """Bring the sidecar back (a new server) with the latest pushed weights; returns the seconds it took."""


# --------------------------------------------------------------------------- manifests


def read_safetensors_header(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return dict(json.loads(f.read(length)))


def read_manifest(folder: str | Path) -> Manifest:
    """name -> {dtype, shape} over every *.safetensors file in `folder` (standard library only)."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {folder}")
    manifest: Manifest = {}
    for path in files:
        for name, entry in read_safetensors_header(path).items():
            if name != "__metadata__":
                manifest[name] = {"dtype": entry["dtype"], "shape": list(entry["shape"])}
    return manifest


def dtype_code(tensor: Any) -> str:
    return DTYPE_CODES.get(str(tensor.dtype).removeprefix("torch."), str(tensor.dtype))


def mismatches(manifest: Manifest, weights: Mapping[str, Any], *, limit: int = 3) -> list[str]:
    """What differs between a push and the manifest (names, then shapes); empty when they match. dtypes are not
    compared: the writer casts to the manifest's dtype."""
    problems = []
    missing = sorted(set(manifest) - set(weights))
    extra = sorted(set(weights) - set(manifest))
    if missing:
        problems.append(f"missing {len(missing)} tensor(s): {', '.join(missing[:limit])}")
    if extra:
        problems.append(f"{len(extra)} unknown tensor(s): {', '.join(extra[:limit])}")
    shapes = [f"{n} {list(weights[n].shape)} != {manifest[n]['shape']}" for n in sorted(set(manifest) & set(weights))
              if list(weights[n].shape) != list(manifest[n]["shape"])]
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es): {'; '.join(shapes[:limit])}")
    return problems


def check_weights(manifest: Manifest, weights: Mapping[str, Any]) -> None:
    problems = mismatches(manifest, weights)
    if problems:
        raise WeightMismatch("weights do not match the served model (nothing was sent): " + "; ".join(problems))


def untie_for_serving(model_dir: Path, dest: Path) -> Path:
    """A copy of a tied-embedding model folder with an explicit `lm_head.weight` (the embedding's bytes) and
    `tie_word_embeddings: false` (standard library only). Why: vLLM's CPU backend packs the output head into a
    copy of its own at load time, and `reload_weights` refreshes the embedding but not that copy, so a tied model
    would keep sampling from its first head after every push (measured: log-prob gaps of ~8 nats). Untied, the head
    is an ordinary linear layer that reloads; the pushes carry it (`complete_untied`). Returns `dest`."""
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    files = sorted(model_dir.glob("*.safetensors"))
    if len(files) != 1:
        raise ValueError(f"{model_dir}: untying needs one safetensors file (found {len(files)})")
    with open(files[0], "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
        data = f.read()
    if "lm_head.weight" in header or EMBEDDING not in header:
        raise ValueError(f"{model_dir}: expected {EMBEDDING} and no lm_head.weight in a tied model")
    begin, end = header[EMBEDDING]["data_offsets"]
    header["lm_head.weight"] = {**header[EMBEDDING], "data_offsets": [len(data), len(data) + end - begin]}
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with open(tmp / WEIGHTS_FILE, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)) + encoded + data + data[begin:end])
    (tmp / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}, indent=2) + "\n",
                                     encoding="utf-8")
    for name in MODEL_FILES[1:]:
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, tmp / name)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def complete_untied(manifest: Manifest, weights: Mapping[str, Any]) -> Mapping[str, Any]:
    """A tied model's push to a server that serves it untied: add `lm_head.weight` (the embedding)."""
    if "lm_head.weight" in manifest and "lm_head.weight" not in weights and EMBEDDING in weights:
        return {**weights, "lm_head.weight": weights[EMBEDDING]}
    return weights


# --------------------------------------------------------------------------- writing


def write_weights(weights: Mapping[str, torch.Tensor], folder: Path, manifest: Manifest, model_dir: Path) -> Path:
    """Write `folder` atomically: model.safetensors (cast to the manifest's dtypes, contiguous, on CPU) plus the
    model files of `model_dir`. A temporary sibling folder is renamed into place."""
    import torch
    from safetensors.torch import save_file

    codes = {code: getattr(torch, name) for name, code in DTYPE_CODES.items()}
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        tensors: dict[str, torch.Tensor] = {}
        seen: set[int] = set()
        for n, t in weights.items():
            t = t.detach().to(device="cpu", dtype=codes.get(manifest[n]["dtype"], t.dtype)).contiguous()
            tensors[n] = t.clone() if t.data_ptr() in seen else t  # safetensors refuses shared storage (a tied head)
            seen.add(t.data_ptr())
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        for name in MODEL_FILES:
            if (Path(model_dir) / name).is_file():
                shutil.copy2(Path(model_dir) / name, tmp / name)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


# --------------------------------------------------------------------------- the filesystem sync


class FilesystemWeightSync:
    """Pushes through a folder both jobs can read (see the module docstring). `root`: where pushes go (the
    trainer's output folder, e.g. `<out>/rollout-weights`); `v<version>/` per push, `latest.json` naming the last."""

    def __init__(self, sidecar: SidecarHandle, root: str | Path, *, keep: int = 2, retries: int = 1,
                 reload_timeout: float = 600.0, restart_wait: float = 600.0):
        if keep < 1:
            raise ValueError(f"keep must be at least 1 (got {keep})")
        self.sidecar, self.root = sidecar, Path(root)
        self.keep, self.retries, self.reload_timeout, self.restart_wait = keep, retries, reload_timeout, restart_wait
        self.manifest: Manifest = sidecar.manifest()
        self.model_dir = Path(sidecar.info["model"])
        self.root.mkdir(parents=True, exist_ok=True)
        latest = self.latest()
        self.latest_folder: Path | None = Path(latest["folder"]) if latest else None
        self.latest_version: int = int(latest["version"]) if latest else int(sidecar.info.get("weight_version", 0))

    def latest(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads((self.root / LATEST).read_text(encoding="utf-8")))
        except (OSError, ValueError):
            return None

    def check(self, weights: Mapping[str, torch.Tensor]) -> None:
        check_weights(self.manifest, complete_untied(self.manifest, weights))

    def folder_for(self, version: int) -> Path:
        return self.root / f"v{int(version):08d}"

    def push(self, weights: Mapping[str, torch.Tensor], version: int) -> PushReport:
        weights = complete_untied(self.manifest, weights)
        check_weights(self.manifest, weights)
        start = time.perf_counter()
        folder = write_weights(weights, self.folder_for(version), self.manifest, self.model_dir)
        write_s = time.perf_counter() - start
        atomic_write_json(self.root / LATEST, {"version": int(version), "folder": str(folder), "time": time.time()})
        self.latest_folder, self.latest_version = folder, int(version)
        retries, restarted = 0, False
        start = time.perf_counter()
        while True:
            try:
                self.sidecar.client.update_weights_from_path(str(folder), version, timeout=self.reload_timeout)
                break
            except SidecarError as exc:
                if retries < self.retries and not isinstance(exc, SidecarUnavailable) and self.sidecar.client.health():
                    retries += 1
                    continue
                self.restart()  # the engine may be broken or gone: a new server from this push
                restarted = True
                break
        self._prune()
        return PushReport(int(version), folder, write_s, time.perf_counter() - start, restarted, retries)

    def restart(self) -> float:
        """A new server from the latest push (or the served model when nothing was pushed yet)."""
        return self.sidecar.restart(self.latest_folder, self.latest_version, wait=self.restart_wait)

    def _prune(self) -> None:
        pushes = sorted(p for p in self.root.glob("v*") if p.is_dir())
        for old in pushes[:-self.keep]:
            if old != self.latest_folder:
                shutil.rmtree(old, ignore_errors=True)


def weight_sync_for(sidecar: SidecarHandle, rl: Mapping[str, Any], out: Path) -> WeightSync:
    """The sync the plan asks for (`rl.weight_sync`): `filesystem` pushes into `<out>/rollout-weights`, `nccl`
    broadcasts from this process's GPU (the sidecar was started with vLLM's NCCL weight-transfer engine)."""
    kind = rl.get("weight_sync", "filesystem")
    if kind == "nccl":
        from runtime.rollout.nccl import NcclWeightSync

        return NcclWeightSync.from_plan(sidecar, rl)
    if kind != "filesystem":
        raise ValueError(f"rl.weight_sync: unknown kind {kind!r} (filesystem or nccl)")
    return FilesystemWeightSync(sidecar, Path(out) / "rollout-weights")
