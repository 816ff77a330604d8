"""The distill job: a teacher answers seed prompts; verified, deduplicated, length-capped, decontaminated samples
become the SFT stage's data.

Order of the filters: empty replies out; wrong final answers out (`verify_answers`, the math verifier against
`answer_field`); exact and near-duplicate conversations out (first kept); responses over `max_length` tokens
(the recipe's tokenizer) cut there or dropped; samples that overlap the eval sets dropped (or the job fails) as
the recipe's decontamination policy says. Every count is in `provenance.json` and `DONE.json`.

Outputs: `sft/{train,validation}.jsonl` (`{"messages": [...], "source": {"prompt": i, "sample": k}}`; every 20th
sample held out), `provenance.json`,
`generations/teacher.jsonl` (raw replies, the resume store), `DONE.json`.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from runtime.generate.contamination import apply_policy
from runtime.generate.dedup import dedup
from runtime.generate.engine import Sampling, concurrency_for, generate_all
from runtime.generate.records import prompt_set, write_splits
from runtime.generate.serving import generator
from runtime.generate.store import ResultStore
from runtime.outputs import atomic_write_json, output_dir, write_done

if TYPE_CHECKING:
    from runtime.rollout.engines import EngineHead


def run_distill(job: dict[str, Any], engines: EngineHead | None = None) -> None:
    config, label = job["config"], job["id"]
    block = config["distill"]
    out = output_dir(job)
    out.mkdir(parents=True, exist_ok=True)
    rows, prompts = prompt_set(job, block)
    print(f"{label}: {len(prompts)} prompts x {block['samples_per_prompt']} samples", flush=True)
    served: dict[str, Any] = {"kind": config["models"]["teacher"]["kind"], "note": "every prompt already stored"}
    timing: dict[str, Any] = {"asked": 0, "seconds": 0.0}
    with ResultStore(out / "generations" / "teacher.jsonl") as store:
        if len(store.results) < len(prompts):  # a rerun after the filters failed needs no server
            n = int(block["samples_per_prompt"])
            with generator(job, "teacher", out, engines=engines) as (client, served):
                timing = generate_all(client, prompts, store, Sampling.of(block, n), label=label,
                                      concurrency=concurrency_for(block, n, served["kind"] != "endpoint"))
        results = store.results
    samples = [{"prompt": i, "sample": k, "messages": prompts[i] + [{"role": "assistant", "content": reply["text"]}],
                "row": rows[i], "finish_reason": reply["finish_reason"]}
               for i in range(len(prompts)) for k, reply in enumerate(results[i]["replies"])]
    counts: dict[str, Any] = {"prompts": len(prompts), "generated": len(samples)}
    counts["hit_max_tokens"] = sum(s["finish_reason"] == "length" for s in samples)
    samples = [s for s in samples if s["messages"][-1]["content"].strip()]
    counts["empty"] = counts["generated"] - len(samples)
    filters = block.get("filters", {})
    if filters.get("verify_answers"):
        samples, counts["wrong_answer"] = _verified(samples, block["answer_field"])
    if filters.get("dedup", True):
        samples, counts["exact_duplicates"], counts["near_duplicates"] = _deduplicated(
            samples, float(filters.get("dedup_threshold", 0.8)))
    if filters.get("max_length"):
        samples, counts["over_length"] = _length_capped(job, samples, int(filters["max_length"]),
                                                        filters.get("over_length", "truncate"))
    decontam = config.get("decontamination")
    if decontam:
        samples, counts["contaminated"] = apply_policy(job, samples, ["messages"], decontam, label, "generated samples")
    counts["kept"] = len(samples)
    if not samples:
        raise NoData(f"{label}: no sample survived the filters ({_counts_text(counts)}): nothing for SFT to train on")
    splits = write_splits(out / config["output"], [
        {"messages": s["messages"], "source": {"prompt": s["prompt"], "sample": s["sample"]}} for s in samples])
    tokens = sum(int(r.get("tokens") or 0) for result in results.values() for r in result["replies"])
    provenance = {"teacher": served, "sampling": {k: block[k] for k in ("samples_per_prompt", "max_tokens",
                                                                          "temperature", "top_p", "seed")},
                  "prompts": block["prompts"], "filters": filters, "counts": counts, "splits": splits,
                  "generation": timing,
                  "tokens_per_s": round(tokens / timing["seconds"], 1) if timing["seconds"] else None}
    atomic_write_json(out / "provenance.json", provenance)
    print(f"{label}: kept {counts['kept']} of {counts['generated']} samples: {_counts_text(counts)}", flush=True)
    write_done(out, {"job": label, "hash": job.get("hash"), "counts": counts, "splits": splits, "generation": timing,
                     "metrics": {f"distill/{k}": v for k, v in counts.items()}})


class NoData(RuntimeError):
    """Every generated sample was filtered out; the message is one line with the counts."""


def _counts_text(counts: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items() if k not in ("prompts", "generated", "kept"))


def _verified(samples: list[dict[str, Any]], answer_field: str) -> tuple[list[dict[str, Any]], int]:
    from runtime.rewards.math_verifier import MathVerifier

    verifier = MathVerifier()
    kept = [s for s in samples if answer_is_correct(verifier, s["messages"][-1]["content"], s["row"], answer_field)]
    return kept, len(samples) - len(kept)


def answer_is_correct(verifier: Any, text: str, row: Mapping[str, Any], answer_field: str) -> bool:
    if answer_field not in row:
        raise ValueError(f"prompt rows have no answer field {answer_field!r} (they have: {', '.join(sorted(row))})")
    return verifier.score(text, {"answer": str(row[answer_field])}).value >= 1.0


def _deduplicated(samples: list[dict[str, Any]], threshold: float) -> tuple[list[dict[str, Any]], int, int]:
    texts = ["\n".join(m["content"] for m in s["messages"]) for s in samples]
    result = dedup(texts, threshold=threshold)
    return [samples[i] for i in result.keep], len(result.exact), len(result.near)


def _length_capped(job: Mapping[str, Any], samples: list[dict[str, Any]], max_length: int,
                   mode: str) -> tuple[list[dict[str, Any]], int]:
    encode, decode = _tokenizer(job)
    kept, over = [], 0
    for s in samples:
        ids = encode(s["messages"][-1]["content"])
        if len(ids) > max_length:
            over += 1
            if mode == "drop":
                continue
            s = {**s, "messages": s["messages"][:-1] + [{"role": "assistant", "content": decode(ids[:max_length])}]}
        kept.append(s)
    return kept, over


def _tokenizer(job: Mapping[str, Any]) -> tuple[Callable[[str], list[int]], Callable[[list[int]], str]]:
    from tokenizers import Tokenizer

    from runtime.lm_data import resolve_path

    folder = Path(resolve_path(job, job["config"]["tokenizer"]))
    tok = Tokenizer.from_file(str(folder / "tokenizer.json" if folder.is_dir() else folder))
    return (lambda text: tok.encode(text, add_special_tokens=False).ids), (lambda ids: tok.decode(ids))
