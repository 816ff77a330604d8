"""RegMix (arXiv 2407.01492): a swarm of proxy trainings on sampled mixtures, a regression from mixture to metrics,
and a solve for the mix the recipe's objective prefers, which pretraining reads at run time.

Entries for the plan (compiler/mix_jobs.py), run as every job is
(`python -m runtime.run_job --config build/<name>/jobs/<id>/config.json --entry runtime.regmix:<entry>`):

- `run_proxy` (mix-swarm, an array job): task i trains proxy i on mixture i (`runtime.regmix.proxy`);
  the eval job `mix-swarm-eval` then evaluates every proxy (`runtime.evals`).
- `run_fit` (mix-fit): LightGBM and a linear baseline per metric, K-fold CV (`runtime.regmix.fit`), fit.json,
  models and predicted-vs-actual plots (`runtime.regmix.jobs`).
- `run_solve` (mix-solve): candidates from the prior, top-k average, mix.json with the trade-off against the
  natural mix (`runtime.regmix.solve`).

The same fit and solve run on a swarm trained elsewhere: `recipe mix fit --ratios R.csv --metrics M.csv ...`
(`runtime.regmix.cli`). Objective convention everywhere: objective = Σ weight × metric over minimised metrics
minus Σ weight × metric over maximised ones, so lower is better (`runtime.regmix.objective`).

These entries import numpy, LightGBM and torch only when a job runs (launch resolves entries without them).
Test: `python -m pytest tests/runtime/test_regmix.py -q`; bench: `python bench/mix_fit.py`.
"""
from __future__ import annotations

from typing import Any


def run_proxy(job: dict[str, Any]) -> None:
    from runtime.regmix.proxy import run_proxy as run

    run(job)


def run_fit(job: dict[str, Any]) -> None:
    from runtime.regmix.jobs import run_fit as run

    run(job)


def run_solve(job: dict[str, Any]) -> None:
    from runtime.regmix.jobs import run_solve as run

    run(job)
