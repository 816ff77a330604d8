"""Benchmark: the RegMix fit + solve on a synthetic swarm of 512 runs × 17 sources, 100,000 candidates.

    python bench/mix_fit.py [--runs 512] [--sources 17] [--candidates 100000] [--top-k 128] [--learning-rate 0.01]
                            [--rounds 1000] [--folds 5] [--noise 0.05] [--threads 2]

Needs numpy and lightgbm (the runtime extra). Issue 6's target: fit + solve under 10 s on 2 cores.

The swarm: mixtures from the runtime's own sampler (Dirichlet over a log-normal token prior, concentration in
[0.1, 5]), metrics from `runtime.regmix.synthetic.Truth` (saturating per-source effects, an interaction and a
sigmoid accuracy; three metrics, the objective 0.6·web/bpb − 0.3·math/acc + 0.1·code/bpb) plus Gaussian noise
(`--noise` × each metric's spread). Timed: `fit_swarm` (LightGBM and linear per metric and for the objective,
K-fold CV with early stopping, refits) and `solve` (candidates sampled within the bounds, the objective's model over
all of them, top-k average, every metric predicted for the chosen and the natural mix). Wall and CPU seconds are
printed: on a shared machine the wall time carries other processes' load, CPU time does not.

Also printed: the CV Spearman and Pearson per metric and for the objective (out of fold; the chosen model and the
linear baseline), and the solved mix's true objective against the best of 200,000 prior samples and the natural mix
(the ground truth is known here).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=512)
    parser.add_argument("--sources", type=int, default=17)
    parser.add_argument("--candidates", type=int, default=100_000)
    parser.add_argument("--top-k", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=0.01, help="RegMix's 0.01 (the recipe default)")
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=2, help="CPUs to use (pins the process to the first N)")
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        allowed = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, allowed[: args.threads])
    import numpy as np

    from runtime.regmix.fit import FitSettings, cpu_count, fit_swarm
    from runtime.regmix.objective import Objective
    from runtime.regmix.sampling import Sampler, natural_weights, rng_for
    from runtime.regmix.solve import solve
    from runtime.regmix.synthetic import OBJECTIVE, Truth

    truth = Truth.make(args.sources, 0)
    sampler = Sampler.from_config(truth.tokens, {"prior": "tokens", "temperature": 1.0, "concentration": [0.1, 5.0]})
    x = sampler.sample(args.runs, rng_for(0, "swarm"))
    metrics = truth.metrics(x, noise=args.noise, rng=np.random.default_rng(1))
    settings = FitSettings(learning_rate=args.learning_rate, num_rounds=args.rounds, cv_folds=args.folds, seed=0)
    natural = natural_weights(truth.tokens)

    wall, cpu = time.perf_counter(), time.process_time()
    fit = fit_swarm(x, metrics, truth.sources, Objective.from_config(OBJECTIVE), settings)
    fit_wall, fit_cpu = time.perf_counter() - wall, time.process_time() - cpu
    wall, cpu = time.perf_counter(), time.process_time()
    result = solve(fit.predictor(), sampler, candidates=args.candidates, top_k=args.top_k, rng=rng_for(0, "solve"),
                   natural=natural)
    solve_wall, solve_cpu = time.perf_counter() - wall, time.process_time() - cpu

    print(f"swarm: {args.runs} runs × {args.sources} sources, {len(metrics)} metrics, noise {args.noise}; "
          f"{args.folds}-fold CV, LightGBM lr {args.learning_rate:g}, ≤ {args.rounds} rounds; {cpu_count()} CPUs")
    print(f"{'target':<10} {'model':<9} {'rounds':>6} {'Spearman':>9} {'Pearson':>8} {'linear ρ':>9}")
    for name, target in [("objective", fit.objective_fit), *fit.metrics.items()]:
        best = target.cv[target.chosen]
        print(f"{name:<10} {target.chosen:<9} {target.model.rounds or '-':>6} {best['spearman']:>9.3f} "
              f"{best['pearson']:>8.3f} {target.cv['linear']['spearman']:>9.3f}")
    print(f"objective recombined from the metrics' CV predictions: Spearman {fit.from_metrics['spearman']:.3f}, "
          f"Pearson {fit.from_metrics['pearson']:.3f}")
    probe = truth.objective(sampler.sample(200_000, np.random.default_rng(9)))
    nat = truth.objective(np.array([natural[s] for s in truth.sources]))[0]
    print(f"true objective (lower is better): solved mix {truth.objective(result.weights)[0]:.4f}, best of 200,000 "
          f"prior samples {probe.min():.4f}, natural mix {nat:.4f}, swarm median {np.median(truth.objective(x)):.4f}")
    total = fit_wall + solve_wall
    print(f"fit {fit_wall:.2f} s (CPU {fit_cpu:.2f} s), solve over {result.candidates:,} candidates {solve_wall:.2f} s "
          f"(CPU {solve_cpu:.2f} s): total {total:.2f} s wall, {fit_cpu + solve_cpu:.2f} s CPU "
          f"({'under' if total < 10 else 'OVER'} the 10 s target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
