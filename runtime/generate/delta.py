"""The delta-pairs job: the same prompts answered by a strong (chosen) and a weak (rejected) model; the pairs become
the DPO stage's data.

Delta learning (what teaches is the gap between chosen and rejected) needs a weak model that is weaker but not
useless: with reference answers (`answer_field`) the job reports both models' accuracy and the gap, so the user
sees whether the weak model is "just right". Pairs whose two responses are identical carry nothing and are always
dropped; `keep` can further require a verified chosen answer (and a wrong rejected one). Pairs overlapping the
eval sets are dropped (or fail the job) as the recipe's decontamination policy says.

Outputs: `pairs/{train,validation}.jsonl` (`{"prompt", "chosen", "rejected"[, "answer"]}`; every 20th pair held
out), `gap.json`, `generations/{chosen,
rejected}.jsonl` (the resume stores), `DONE.json`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runtime.generate.contamination import apply_policy
from runtime.generate.distill import NoData, answer_is_correct
from runtime.generate.engine import Sampling, concurrency_for, generate_all
from runtime.generate.records import prompt_set, write_splits
from runtime.generate.serving import generator
from runtime.generate.store import ResultStore
from runtime.outputs import atomic_write_json, output_dir, write_done

if TYPE_CHECKING:
    from runtime.rollout.engines import EngineHead

ROLES = ("chosen", "rejected")


def run_delta_pairs(job: dict[str, Any], engines: EngineHead | None = None) -> None:
    config, label = job["config"], job["id"]
    block = config["delta"]
    out = output_dir(job)
    out.mkdir(parents=True, exist_ok=True)
    rows, prompts = prompt_set(job, block)
    replies: dict[str, list[str]] = {}
    timing: dict[str, Any] = {}
    served: dict[str, Any] = {}
    for role in ROLES:  # one model at a time: each gets the job's GPUs
        with ResultStore(out / "generations" / f"{role}.jsonl") as store:
            if len(store.results) < len(prompts):
                with generator(job, role, out, engines=engines) as (client, served[role]):
                    timing[role] = generate_all(
                        client, prompts, store, Sampling.of(block), label=f"{label} {role}",
                        concurrency=concurrency_for(block, 1, served[role]["kind"] != "endpoint"))
            replies[role] = [store.results[i]["replies"][0]["text"] for i in range(len(prompts))]
    pairs = [{"index": i, "prompt": _prompt_field(prompts[i]), "chosen": replies["chosen"][i],
              "rejected": replies["rejected"][i], "row": rows[i]} for i in range(len(prompts))]
    counts: dict[str, Any] = {"prompts": len(prompts)}
    gap = _gap(pairs, block.get("answer_field"))
    kept = [p for p in pairs if p["chosen"].strip() != p["rejected"].strip() and p["chosen"].strip()]
    counts["identical_or_empty"] = len(pairs) - len(kept)
    keep = block.get("keep", "all")
    if keep != "all":
        before = len(kept)
        kept = [p for p in kept if p["correct"]["chosen"] and (keep == "chosen_correct" or not p["correct"]["rejected"])]
        counts[f"not_{keep}"] = before - len(kept)
    decontam = config.get("decontamination")
    if decontam:
        kept, counts["contaminated"] = apply_policy(job, kept, ["prompt", "chosen", "rejected"], decontam, label,
                                                    "pairs")
    counts["kept"] = len(kept)
    if not kept:
        raise NoData(f"{label}: no pair survived ({', '.join(f'{k} {v}' for k, v in counts.items())}): nothing for "
                      "DPO to train on")
    answer_field = block.get("answer_field")
    splits = write_splits(out / config["output"], [
        {"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"],
         **({"answer": str(p["row"][answer_field])} if answer_field else {})} for p in kept])
    atomic_write_json(out / "gap.json", {"models": served, "gap": gap, "counts": counts, "splits": splits,
                                         "generation": timing})
    if gap:
        print(f"{label}: chosen accuracy {gap['chosen_accuracy']:.3f}, rejected {gap['rejected_accuracy']:.3f}, "
              f"gap {gap['gap']:+.3f}; chosen right and rejected wrong on {gap['chosen_beats_rejected']:.3f}", flush=True)
    print(f"{label}: kept {counts['kept']} of {counts['prompts']} pairs", flush=True)
    metrics = {f"delta/{k}": v for k, v in {**gap, **counts}.items()}
    write_done(out, {"job": label, "hash": job.get("hash"), "counts": counts, "splits": splits, "gap": gap,
                     "generation": timing, "metrics": metrics})


def _prompt_field(messages: list[dict[str, str]]) -> Any:
    """A single user turn as a string (the common preference-data shape); a longer conversation as messages."""
    return messages[0]["content"] if len(messages) == 1 else messages


def _gap(pairs: list[dict[str, Any]], answer_field: str | None) -> dict[str, float]:
    """Each side's accuracy against the reference answers, and how often chosen is right where rejected is wrong."""
    if not answer_field or not pairs:
        for p in pairs:
            p["correct"] = {"chosen": True, "rejected": False}
        return {}
    from runtime.rewards.math_verifier import MathVerifier

    verifier = MathVerifier()
    for p in pairs:
        p["correct"] = {role: answer_is_correct(verifier, p[role], p["row"], answer_field) for role in ROLES}
    n = len(pairs)
    chosen = sum(p["correct"]["chosen"] for p in pairs) / n
    rejected = sum(p["correct"]["rejected"] for p in pairs) / n
    beats = sum(p["correct"]["chosen"] and not p["correct"]["rejected"] for p in pairs) / n
    return {"chosen_accuracy": round(chosen, 4), "rejected_accuracy": round(rejected, 4),
            "gap": round(chosen - rejected, 4), "chosen_beats_rejected": round(beats, 4)}
