"""The language-model data pipeline: sources through `datasets`, a weighted mixture, packing with document boundaries.

A training job's `config.data` names sources (`{name: {path|hf, split, text_field, eval_split, subset}}`) and
weights (`{name: w}`, or `{from_job, file}`: read at run time from the producer job's output folder, whose path is
in `$RECIPE_INPUT_<JOBID>`; the file holds `{"weights": {name: w}}` or `{name: w}`).

- `resolve_sources(job)`: relative `path`s (and the tokenizer) resolve against the recipe folder:
  `$RECIPE_RECIPE_DIR` (absolute; `recipe launch` sets it), else the job's `recipe_dir` relative to the plan
  folder (`build/<name>/`, the job folder's grandparent; the job folder comes from `$RECIPE_JOB_DIR`, which the
  Slurm launch script exports, else `./build/<recipe>/jobs/<id>`).
- `load_source(spec, split)`: a local folder is `<path>/<split>.jsonl`, read with
  `datasets.load_dataset("json", data_files=...)` (offline: HF_DATASETS_OFFLINE=1); a file is read as is; `hf`
  is a hub id (`load_dataset(hf, subset, split=split)`).
- `MixtureDataset`: every document is drawn from a source chosen at random by weight (`random.Random`, seeded by
  the job's seed); each source is read in a shuffled order (seeded per epoch) and
  re-looped when it runs out, so the stream is infinite and deterministic. Documents are tokenized as
  `<bos> text <eos>`, shifted within the document (the last token of a document never predicts the next one's
  first) and packed into rows of `seq_len` tokens with per-document `positions` (restarting at 0 at every
  document start): torchtitan's `Decoder.get_attention_masks(positions)` turns them into a block-causal
  document mask (FlexAttention on GPU, `DenseMaskAttention` on CPU). Data parallelism: every rank builds the
  same global stream of rows and keeps rows `rank, rank + W, ...`, so a step sees the same rows whatever the
  number of processes (a 2-process run matches the 1-process loss curve); each rank tokenizes the whole stream,
  which is cheap next to training at these sizes but is the first thing to shard for big corpora. Its state (RNG, per-source read positions,
  the partial row) is saved in torchtitan's checkpoints, so a resumed job sees exactly the same data.
- `MixtureDataLoader`: torchtitan's `ParallelAwareDataloader` over it; `MixtureDataLoader.Config` is what
  `Trainer.Config.dataloader` takes (built by `runtime.titan_config`).

Test: `python -m pytest tests/runtime/test_lm_data.py -q`.
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch.distributed.checkpoint.stateful import Stateful
from torch.utils.data import IterableDataset

from runtime.outputs import input_dir


# --------------------------------------------------------------------------- paths and sources


def plan_dir(job: Mapping[str, Any]) -> Path:
    """The plan folder (`build/<name>/`): the job folder's grandparent."""
    env = os.environ.get("RECIPE_JOB_DIR")
    job_dir = Path(env) if env else Path.cwd() / "build" / job.get("recipe", "") / "jobs" / job["id"]
    return job_dir.resolve().parent.parent


def recipe_root(job: Mapping[str, Any]) -> Path:
    """The folder the recipe's relative paths are relative to."""
    if os.environ.get("RECIPE_RECIPE_DIR"):
        return Path(os.environ["RECIPE_RECIPE_DIR"]).resolve()
    root = Path(job.get("recipe_dir", "."))
    return root if root.is_absolute() else (plan_dir(job) / root).resolve()


def resolve_path(job: Mapping[str, Any], value: str) -> str:
    path = Path(value)
    return str(path if path.is_absolute() else (recipe_root(job) / path).resolve())


def resolve_sources(job: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The job's sources with local paths made absolute."""
    out = {}
    for name, spec in job["config"]["data"]["sources"].items():
        spec = dict(spec)
        if spec.get("path"):
            spec["path"] = resolve_path(job, spec["path"])
        out[name] = spec
    return out


def resolve_weights(job: Mapping[str, Any]) -> dict[str, float]:
    """Fixed weights, or the producer job's weights file; normalised to sum 1, zero weights dropped."""
    weights = job["config"]["data"]["weights"]
    if "from_job" in weights:
        producer = weights["from_job"]
        path = input_dir(producer, needed_by=f"job {job['id']}") / weights["file"]
        if not path.is_file():
            raise FileNotFoundError(f"job {job['id']}: mixture weights {path} not found (written by job {producer})")
        data = json.loads(path.read_text(encoding="utf-8"))
        weights = data.get("weights", data)
    sources = job["config"]["data"]["sources"]
    unknown = sorted(set(weights) - set(sources))
    if unknown:
        raise ValueError(f"job {job['id']}: weights name unknown sources {unknown} (sources: {sorted(sources)})")
    weights = {k: float(v) for k, v in weights.items() if float(v) > 0}
    total = sum(weights.values())
    if total <= 0:
        raise ValueError(f"job {job['id']}: mixture weights sum to {total}")
    return {k: v / total for k, v in sorted(weights.items())}


def load_source(spec: Mapping[str, Any], split: str | None = None) -> Any:
    """One split of a source as a map-style `datasets.Dataset`, without the rows the decontamination job dropped
    from it (`drop`: a JSON list of row indices, or `{from_job, file}` in that job's output) when it is that split."""
    split = split or spec.get("split") or "train"
    ds = _load_split(spec, split)
    if spec.get("drop") and split == (spec.get("split") or "train"):
        dropped = set(drop_list(spec["drop"]))
        ds = ds.select([i for i in range(len(ds)) if i not in dropped])
    return ds


def drop_list(drop: str | Mapping[str, Any]) -> list[int]:
    if isinstance(drop, Mapping):
        path = input_dir(drop["from_job"], needed_by="a decontaminated data source") / drop["file"]
    else:
        path = Path(drop)
    if not path.is_file():
        raise FileNotFoundError(f"decontamination drop list {path} not found")
    return [int(i) for i in json.loads(path.read_text(encoding="utf-8"))]


def _load_split(spec: Mapping[str, Any], split: str) -> Any:
    from datasets import load_dataset

    if spec.get("path"):
        path = Path(spec["path"])
        files = str(path / f"{split}.jsonl") if path.is_dir() else str(path)
        if not Path(files).is_file():
            raise FileNotFoundError(f"data source {path}: no {split}.jsonl (generate the toy world: "
                                    f"python -m runtime.toyworld DIR)")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        return load_dataset("json", data_files=files, split="train")
    if spec.get("hf"):
        return load_dataset(spec["hf"], spec.get("subset"), split=split)
    raise ValueError(f"data source has neither path nor hf: {dict(spec)}")


def source_texts(spec: Mapping[str, Any], split: str | None = None) -> list[str]:
    ds = load_source(spec, split)
    return [str(t) for t in ds[spec.get("text_field") or "text"]]


# --------------------------------------------------------------------------- the mixture


class MixtureDataset(IterableDataset, Stateful):
    """Weighted document mixture packed into `seq_len` rows: yields `({"input", "positions"}, labels)`.

    texts: name -> list of documents. Deterministic in `seed`; rank `dp_rank` of `dp_world_size` keeps every
    `dp_world_size`-th row of the one global stream.
    """

    def __init__(self, texts: Mapping[str, list[str]], weights: Mapping[str, float], tokenizer: Any, seq_len: int,
                 *, seed: int = 0, dp_rank: int = 0, dp_world_size: int = 1):
        self.names = sorted(n for n in weights if weights[n] > 0)
        missing = [n for n in self.names if not texts.get(n)]
        if missing:
            raise ValueError(f"mixture sources without documents: {missing}")
        self.weights = [float(weights[n]) for n in self.names]
        self.texts = {n: list(texts[n]) for n in self.names}
        self.tokenizer, self.seq_len, self.seed = tokenizer, seq_len, seed
        self.dp_rank, self.dp_world_size = dp_rank, dp_world_size
        self._rng = random.Random(f"mixture-{seed}")
        self._row = 0  # index of the next row of the global stream
        self._cursor = {n: 0 for n in self.names}
        self._epoch = {n: 0 for n in self.names}
        self._orders: dict[str, tuple[int, list[int]]] = {}
        self.doc_counts = {n: 0 for n in self.names}
        self._inputs: list[int] = []
        self._labels: list[int] = []
        self._positions: list[int] = []

    def _order(self, name: str) -> list[int]:
        """This source's reading order in its current epoch (a seeded shuffle, cached per epoch)."""
        epoch = self._epoch[name]
        cached = self._orders.get(name)
        if cached is None or cached[0] != epoch:
            order = list(range(len(self.texts[name])))
            random.Random(f"order-{self.seed}-{name}-{epoch}").shuffle(order)
            cached = self._orders[name] = (epoch, order)
        return cached[1]

    def next_document(self) -> tuple[str, str]:
        """(source name, text) of the next document in the stream."""
        name = self._rng.choices(self.names, weights=self.weights, k=1)[0]
        order = self._order(name)
        if self._cursor[name] >= len(order):
            self._epoch[name] += 1
            self._cursor[name] = 0
            order = self._order(name)
        text = self.texts[name][order[self._cursor[name]]]
        self._cursor[name] += 1
        self.doc_counts[name] += 1
        return name, text

    def __iter__(self) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        n = self.seq_len
        while True:
            while len(self._inputs) < n:
                _, text = self.next_document()
                tokens = self.tokenizer.encode(text, add_bos=True, add_eos=True)
                self._inputs.extend(tokens[:-1])
                self._labels.extend(tokens[1:])
                # positions restart per document; a document longer than seq_len is cut into seq_len chunks
                self._positions.extend(i % n for i in range(len(tokens) - 1))
            positions = self._positions[:n]
            if positions[0] != 0:  # a document carried over from the previous row starts again at 0
                offset = positions[0]
                for i, p in enumerate(positions):
                    if p == 0 and i > 0:
                        break
                    positions[i] = p - offset
            row = ({"input": torch.tensor(self._inputs[:n], dtype=torch.long),
                    "positions": torch.tensor(positions, dtype=torch.long)},
                   torch.tensor(self._labels[:n], dtype=torch.long))
            del self._inputs[:n], self._labels[:n], self._positions[:n]
            self._row += 1
            if (self._row - 1) % self.dp_world_size == self.dp_rank:
                yield row

    def state_dict(self) -> dict[str, Any]:
        return {"row": self._row, "rng": self._rng.getstate(), "cursor": dict(self._cursor), "epoch": dict(self._epoch),
                "doc_counts": dict(self.doc_counts), "inputs": list(self._inputs), "labels": list(self._labels),
                "positions": list(self._positions)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        rng = state["rng"]
        self._rng.setstate((rng[0], tuple(rng[1]), rng[2]))
        self._row = int(state["row"])
        self._cursor, self._epoch = dict(state["cursor"]), dict(state["epoch"])
        self.doc_counts = dict(state["doc_counts"])
        self._inputs, self._labels = list(state["inputs"]), list(state["labels"])
        self._positions = list(state["positions"])


def _loader_base() -> type:
    from torchtitan.components.dataloader import ParallelAwareDataloader
    return ParallelAwareDataloader


class SourceDataLoader(_loader_base()):  # type: ignore[misc]
    """torchtitan dataloader over a dataset built from one source (`Config.source`, absolute paths) by the subclass's
    `build_dataset`; the dataset's state is saved and restored by torchtitan's checkpoints. Subclasses define their
    own nested `Config(SourceDataLoader.Config)` (torchtitan wires `Config.build()` to the class that owns it)."""

    @dataclass(kw_only=True, slots=True)
    class Config(_loader_base().Config):  # type: ignore[misc,name-defined]
        source: dict[str, Any] = field(default_factory=dict)
        """{path|hf, split, text_field, subset} with an absolute path."""
        seed: int = 0

    def build_dataset(self, config: Config, *, tokenizer: Any, seq_len: int, dp_rank: int,
                      dp_world_size: int) -> IterableDataset:
        raise NotImplementedError

    def __init__(self, config: Config, *, dp_world_size: int, dp_rank: int, tokenizer: Any, seq_len: int,
                 local_batch_size: int, snapshot_every_n_steps: int | None = 1, **kwargs: Any):
        dataset = self.build_dataset(config, tokenizer=tokenizer, seq_len=seq_len, dp_rank=dp_rank,
                                     dp_world_size=dp_world_size)
        super().__init__(dataset, dp_rank=dp_rank, dp_world_size=dp_world_size, batch_size=local_batch_size,
                         num_workers=config.num_workers, snapshot_every_n_steps=snapshot_every_n_steps)


class MixtureDataLoader(_loader_base()):  # type: ignore[misc]
    """torchtitan dataloader over a `MixtureDataset` (stateful: saved and restored by torchtitan's checkpoints)."""

    @dataclass(kw_only=True, slots=True)
    class Config(_loader_base().Config):  # type: ignore[misc,name-defined]
        sources: dict[str, dict[str, Any]] = field(default_factory=dict)
        """name -> source spec with absolute paths (`resolve_sources`)."""
        weights: dict[str, float] = field(default_factory=dict)
        seed: int = 0

    def __init__(self, config: Config, *, dp_world_size: int, dp_rank: int, tokenizer: Any, seq_len: int,
                 local_batch_size: int, snapshot_every_n_steps: int | None = 1, **kwargs: Any):
        texts = {name: source_texts(config.sources[name]) for name in config.weights}
        dataset = MixtureDataset(texts, config.weights, tokenizer, seq_len, seed=config.seed, dp_rank=dp_rank,
                                 dp_world_size=dp_world_size)
        super().__init__(dataset, dp_rank=dp_rank, dp_world_size=dp_world_size, batch_size=local_batch_size,
                         num_workers=config.num_workers, snapshot_every_n_steps=snapshot_every_n_steps)
