"""A synthetic swarm with a known nonlinear ground truth, for the tests and `bench/mix_fit.py`.

    truth = Truth.make(sources=17, seed=0)
    x = sampler.sample(512, rng)               # mixtures
    metrics = truth.metrics(x, noise=0.01, rng=rng)

Three metrics with saturating, interacting effects of the weights (what proxy swarms show: the first few percent of
a source buy most of its benefit):

- `web/bpb` (minimize): 0.8 + Σ_j a_j·exp(−w_j/τ_j) + 0.3·w_0·w_1   (every source helps a little, some much);
- `math/acc` (maximize): sigmoid(6·√w_math + 2·√w_code − 3), w_math and w_code = the first two sources;
- `code/bpb` (minimize): 0.5 + 0.6·exp(−w_code/0.08) + 0.05·Σ_j w_j².
Noise: Gaussian with standard deviation `noise` × the metric's spread over the prior, added to every metric.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

OBJECTIVE = [{"metric": "web/bpb", "weight": 0.6, "direction": "minimize"},
             {"metric": "math/acc", "weight": 0.3, "direction": "maximize"},
             {"metric": "code/bpb", "weight": 0.1, "direction": "minimize"}]


@dataclass(frozen=True)
class Truth:
    sources: tuple[str, ...]
    tokens: dict[str, float]
    a: np.ndarray
    tau: np.ndarray

    @classmethod
    def make(cls, sources: int = 17, seed: int = 0) -> "Truth":
        rng = np.random.default_rng(seed)
        names = tuple(["math", "code"] + [f"s{j:02d}" for j in range(2, sources)])[:sources]
        tokens = {n: float(t) for n, t in zip(names, rng.lognormal(20, 1.0, size=sources))}
        return cls(names, tokens, rng.uniform(0.02, 0.3, size=sources), rng.uniform(0.03, 0.2, size=sources))

    def clean(self, x: np.ndarray) -> dict[str, np.ndarray]:
        x = np.atleast_2d(np.asarray(x, dtype=float))
        web = 0.8 + (self.a * np.exp(-x / self.tau)).sum(axis=1) + 0.3 * x[:, 0] * x[:, min(1, x.shape[1] - 1)]
        code_w = x[:, min(1, x.shape[1] - 1)]
        acc = 1.0 / (1.0 + np.exp(-(6.0 * np.sqrt(x[:, 0]) + 2.0 * np.sqrt(code_w) - 3.0)))
        code = 0.5 + 0.6 * np.exp(-code_w / 0.08) + 0.05 * (x * x).sum(axis=1)
        return {"web/bpb": web, "math/acc": acc, "code/bpb": code}

    def metrics(self, x: np.ndarray, *, noise: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
        clean = self.clean(x)
        return {m: v + rng.normal(0.0, noise * float(np.std(v)) if len(v) > 1 else 0.0, size=len(v))
                for m, v in clean.items()}

    def objective(self, x: np.ndarray) -> np.ndarray:
        from runtime.regmix.objective import Objective

        return np.asarray(Objective.from_config(OBJECTIVE)(self.clean(x)), dtype=float)
