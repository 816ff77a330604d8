"""The fit and solve jobs of a RegMix plan: read the swarm and its evals, write fit.json / mix.json, plots, DONE.json.

`run_fit(job)` (mix-fit; config: regressor, objective, seed, metrics_job):
    reads `$RECIPE_INPUT_MIX_SWARM/swarm.json` and `proxy-<i>/mix.json` (weights) and
    `$RECIPE_INPUT_<METRICS_JOB>/proxy-<i>/metrics.json` ({"metrics": {name: value}}) for every proxy; fits every
    metric all used proxies report, and the objective (`runtime.regmix.fit`); writes fit.json (CV scores per
    metric and for the objective, chosen models, sources = feature names, the swarm's token counts and natural mix),
    models/*.txt, plots/cv-<target>.png (out-of-fold predicted vs actual), DONE.json. Proxies without metrics are
    left out and listed; fewer than max(2 × folds, 8) usable proxies is an error.
`run_solve(job)` (mix-solve; config: solver, bounds, sampling, seed):
    loads `$RECIPE_INPUT_MIX_FIT` (fit.json + models), samples `solver.candidates` in-bounds mixtures on the seed's
    "solve" stream, averages the top k (`runtime.regmix.solve`) and writes mix.json (what pretraining reads:
    `{"weights": ...}` plus predicted metrics, objective, natural mix, delta, CV), tradeoff.txt, plots/mix.png and
    DONE.json (with the trade-off table).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Mapping

SWARM_JOB, FIT_JOB = "mix-swarm", "mix-fit"
PLOTS_DIR = "plots"


class FitInputError(RuntimeError):
    """The swarm or its evals cannot be fitted; the message is one line."""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def collect_swarm(swarm_dir: Path, evals_dir: Path, objective_metrics: list[str], job_id: str) -> dict[str, Any]:
    """Weights and metrics of every proxy that has both; which were left out and why."""
    swarm = _read_json(swarm_dir / "swarm.json")
    if not isinstance(swarm, dict) or "sources" not in swarm:
        raise FitInputError(f"job {job_id}: {swarm_dir / 'swarm.json'} missing or unreadable (did mix-swarm run?)")
    sources = list(swarm["sources"])
    rows, missing = [], []
    for index in range(int(swarm["swarm_size"])):
        name = f"proxy-{index:05d}"
        mix = _read_json(swarm_dir / name / "mix.json")
        found = _read_json(evals_dir / name / "metrics.json")
        metrics = found.get("metrics") if isinstance(found, dict) else None
        if not isinstance(mix, dict) or not isinstance(metrics, dict):
            missing.append(name)
            continue
        values = {k: float(v) for k, v in metrics.items() if _finite(v)}
        if any(m not in values for m in objective_metrics):
            missing.append(name)
            continue
        rows.append((index, [float(mix["weights"][s]) for s in sources], values))
    common = set.intersection(*(set(r[2]) for r in rows)) if rows else set()
    return {"swarm": swarm, "sources": sources, "rows": rows, "missing": missing,
            "metrics": sorted(common, key=lambda m: (m not in objective_metrics, m))}


def write_fit(fit: Any, out: Path, extra: Mapping[str, Any]) -> dict[str, Any]:
    """fit.json, models/ and plots/cv-*.png of a SwarmFit."""
    from runtime.regmix.fit import model_file
    from runtime.regmix.plots import cv_plot

    data = fit.save(out, extra)
    targets = [("objective", fit.objective_fit), *fit.metrics.items()]
    for name, target in targets:
        if target.chosen == "constant":
            continue
        stem = "objective" if name == "objective" else model_file(name)[: -len(".txt")]
        cv_plot(name, target.actual, target.chosen_oof, target.cv[target.chosen], target.chosen,
                out / PLOTS_DIR / f"cv-{stem}.png")
    return data


def _output_unless_done(job: dict[str, Any]) -> Path | None:
    """The job's output folder, or None (said on stdout) when its DONE.json shows it already ran."""
    from runtime.outputs import output_dir, read_done

    out = output_dir(job)
    if read_done(out) is not None:
        print(f"{job['id']}: already done ({out / 'DONE.json'})")
        return None
    return out


def run_fit(job: dict[str, Any]) -> None:
    import numpy as np

    from runtime.outputs import input_dir, write_done
    from runtime.regmix.fit import FitSettings, fit_swarm
    from runtime.regmix.objective import Objective

    out = _output_unless_done(job)
    if out is None:
        return
    started = time.time()
    config = job["config"]
    objective = Objective.from_config(config["objective"])
    settings = FitSettings.from_config(config["regressor"], int(config.get("seed", 0)))
    metrics_job = config.get("metrics_job", "mix-swarm-eval")
    data = collect_swarm(input_dir(SWARM_JOB, needed_by=f"job {job['id']}"),
                         input_dir(metrics_job, needed_by=f"job {job['id']}"), objective.metrics, job["id"])
    rows, missing = data["rows"], data["missing"]
    if len(rows) < settings.min_runs():
        example = f" (e.g. {', '.join(missing[:3])})" if missing else ""
        raise FitInputError(f"job {job['id']}: {len(rows)} of {data['swarm']['swarm_size']} proxies have weights and "
                            f"the objective's metrics{example}; a {settings.cv_folds}-fold CV needs at least "
                            f"{settings.min_runs()}: check {metrics_job}'s proxy-*/metrics.json")
    x = np.array([r[1] for r in rows])
    metrics = {m: np.array([r[2][m] for r in rows]) for m in data["metrics"]}
    fit = fit_swarm(x, metrics, data["sources"], objective, settings)
    swarm = data["swarm"]
    extra = {"job": job["id"], "tokens": swarm["tokens"], "natural": swarm["natural"],
             "swarm": {"size": swarm["swarm_size"], "used": [r[0] for r in rows], "missing": missing}}
    summary = write_fit(fit, out, extra)
    cv = summary["cv"]["objective"]
    print(f"{job['id']}: {len(rows)} proxies, {len(metrics)} metrics; objective CV Spearman {cv['spearman']}, "
          f"Pearson {cv['pearson']} ({cv['chosen']})", flush=True)
    write_done(out, {"job": job["id"], "kind": job["kind"], "hash": job["hash"],
                     "metrics": {"cv_spearman": cv["spearman"], "cv_pearson": cv["pearson"]},
                     "chosen": {m: v["chosen"] for m, v in summary["cv"]["metrics"].items()},
                     "proxies": len(rows), "seconds": round(time.time() - started, 2)})


def run_solve(job: dict[str, Any]) -> None:
    from runtime.outputs import atomic_write_json, atomic_write_text, input_dir, write_done
    from runtime.regmix.fit import load_fit
    from runtime.regmix.plots import mix_plot
    from runtime.regmix.sampling import Sampler, rng_for
    from runtime.regmix.solve import solve

    out = _output_unless_done(job)
    if out is None:
        return
    started = time.time()
    config = job["config"]
    fit_data, predictor = load_fit(input_dir(FIT_JOB, needed_by=f"job {job['id']}"))
    tokens = {s: fit_data["tokens"][s] for s in predictor.sources}
    sampler = Sampler.from_config(tokens, config["sampling"], config.get("bounds"))
    solver = config["solver"]
    result = solve(predictor, sampler, candidates=int(solver["candidates"]), top_k=int(solver["top_k"]),
                   rng=rng_for(int(config.get("seed", 0)), "solve"), natural=fit_data["natural"])
    mix = {**result.as_json(), "cv": fit_data["cv"], "bounds": config.get("bounds") or {},
           "objective_terms": fit_data["objective"], "convention": fit_data["convention"]}
    table = result.table()
    atomic_write_text(out / "tradeoff.txt", table + "\n")
    mix_plot(result, out / PLOTS_DIR / "mix.png")
    atomic_write_json(out / "mix.json", mix)
    print(table, flush=True)
    write_done(out, {"job": job["id"], "kind": job["kind"], "hash": job["hash"], "weights": mix["weights"],
                     "metrics": {"predicted_objective": result.objective, "natural_objective": result.natural_objective},
                     "tradeoff": table, "seconds": round(time.time() - started, 2)})
