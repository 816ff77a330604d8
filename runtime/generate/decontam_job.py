"""The `decontaminate` job (compiler/decontam_jobs.py): every training dataset of the plan against the eval sets.

Writes `drop/<key>.json` (the contaminated row indices of each dataset, read by its consumers under `policy: drop`),
`report.json` (per dataset: rows, contaminated rows, per eval set rows and distinct items hit) and `DONE.json`.
Under `policy: fail` a contaminated dataset fails the job after the report is written.
"""
from __future__ import annotations

import time
from typing import Any

from runtime.generate.contamination import Contaminated, eval_index, scan, summary
from runtime.generate.ngrams import EvalIndex
from runtime.generate.records import load_rows
from runtime.outputs import atomic_write_json, output_dir, write_done


def eval_item_counts(index: EvalIndex) -> dict[str, int]:
    counts: dict[str, int] = {}
    for eval_set, _ in index.items:
        counts[eval_set] = counts.get(eval_set, 0) + 1
    return counts


def run_decontaminate(job: dict[str, Any]) -> None:
    config, label = job["config"], job["id"]
    out = output_dir(job)
    (out / "drop").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    index = eval_index(job, config)
    report: dict[str, Any] = {}
    for key, entry in sorted(config["datasets"].items()):
        ref = {k: v for k, v in entry["ref"].items() if k != "drop"}
        rows = load_rows(job, ref)
        result = scan(index, rows, entry["fields"])
        atomic_write_json(out / "drop" / f"{key}.json", result.contaminated)
        report[key] = {**result.as_dict(), "read_by": entry["read_by"]}
        print(f"{label}: {summary(key, result)}", flush=True)
    seconds = round(time.perf_counter() - started, 2)
    totals = {"datasets": len(report), "rows": sum(r["rows"] for r in report.values()),
              "contaminated": sum(r["contaminated"] for r in report.values())}
    atomic_write_json(out / "report.json", {"policy": config["policy"], "ngram": config["ngram"],
                                            "eval_items": eval_item_counts(index), "datasets": report, "totals": totals})
    dirty = [k for k, r in report.items() if r["contaminated"]]
    if dirty and config["policy"] == "fail":
        listing = ", ".join(f"{k} ({report[k]['contaminated']} rows)" for k in dirty)
        raise Contaminated(f"{label}: {listing} overlap "
                           f"the eval sets (policy: fail; see {out / 'report.json'})")
    write_done(out, {"job": label, "hash": job.get("hash"), "seconds": seconds, "policy": config["policy"],
                     "metrics": {f"decontam/{k}/contaminated": r["contaminated"] for k, r in report.items()},
                     **totals})
