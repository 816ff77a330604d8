"""The regression from mixture weights to metrics: LightGBM and a linear baseline per target, chosen by K-fold CV.

    from runtime.regmix.fit import FitSettings, fit_swarm
    fit = fit_swarm(weights, metrics, sources, objective, FitSettings(cv_folds=5, seed=0))
    fit.objective_fit.cv["lightgbm"]          # {"spearman", "pearson", "rmse"} out of fold
    fit.predictor().predict_objective(X)      # lower is better (runtime.regmix.objective)

Targets (features = the sources' weights, in `sources` order): every metric, and the combined objective itself
(the recipe's weighted sum, lower is better), fitted directly as RegMix fits its one target. The solve ranks its
candidates with the objective's model (one model over 100,000 candidates, not one per metric); the metrics' models
give the trade-off (each metric's predicted change). fit.json also reports the objective as recombined from the
metrics' out-of-fold predictions, a check that the two agree.

Per target:
- LightGBM (gbdt; the recipe's learning rate, leaves and most rounds): the K fold boosters train together
  (`lightgbm.cv`, early stopping on the mean validation L2 with the recipe's patience), and the number of rounds is
  the fewest whose mean validation L2 is within one standard error of the best (`one_standard_error_rounds`); the
  out-of-fold predictions are each fold's booster at that round; the final model is refit on the whole swarm with
  that many rounds. Only the swarm's folds inform a choice (there is no test set); the one hyper-parameter picked
  on them (rounds) makes the CV score very slightly optimistic, as any CV with early stopping is.
- Linear: least squares on the weights (no intercept: the weights sum to 1, so it is in the span).
- The model with the lower out-of-fold RMSE is chosen and recorded with both models' scores; a target constant
  over the swarm gets a constant model (its correlations are undefined: null).
Same folds (shuffled with the seed) for every target and model. LightGBM runs single-threaded per model (swarms
are small: its threads cost more than they save) and the targets are fitted in parallel threads (LightGBM's C
calls release the GIL); the solve's predictions split the candidates across threads the same way.

`SwarmFit.save(dir)` writes fit.json and models/<target>.txt (LightGBM's text format); `load_fit(dir)` reads them.
"""
from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from runtime.regmix.objective import Objective, scores

FIT_FILE = "fit.json"
MODELS_DIR = "models"
OBJECTIVE_FILE = "objective.txt"
KINDS = ("lightgbm", "linear")
# Histogram bins per feature: swarms have hundreds of runs, so 63 bins still hold several runs each, and training
# is about twice as fast as with LightGBM's 255 (the same CV scores on the bench's synthetic swarm).
MAX_BIN = 63


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity), not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True)
class FitSettings:
    """The plan's regressor block (compiler's RegressorSpec) plus the seed."""

    learning_rate: float = 0.01
    num_rounds: int = 1000
    num_leaves: int = 31
    early_stopping_rounds: int = 50
    cv_folds: int = 5
    seed: int = 0
    threads: int = 0  # 0: the CPUs this process may use

    @classmethod
    def from_config(cls, regressor: Mapping[str, Any], seed: int) -> "FitSettings":
        kind = regressor.get("kind", "lightgbm")
        if kind != "lightgbm":
            raise ValueError(f"regressor.kind {kind!r}: only lightgbm is supported")
        return cls(learning_rate=float(regressor.get("learning_rate", 0.01)),
                   num_rounds=int(regressor.get("num_rounds", 1000)), num_leaves=int(regressor.get("num_leaves", 31)),
                   early_stopping_rounds=int(regressor.get("early_stopping_rounds", 50)),
                   cv_folds=int(regressor.get("cv_folds", 5)), seed=int(seed))

    def min_runs(self) -> int:
        """The fewest runs a K-fold CV can say something about: two per fold, and at least 8."""
        return max(2 * self.cv_folds, 8)

    def cpu_threads(self) -> int:
        return self.threads or cpu_count()

    def as_json(self) -> dict[str, Any]:
        return {"kind": "lightgbm", "learning_rate": self.learning_rate, "num_rounds": self.num_rounds,
                "num_leaves": self.num_leaves, "early_stopping_rounds": self.early_stopping_rounds,
                "cv_folds": self.cv_folds, "seed": self.seed, "selection": "per target, lower out-of-fold RMSE"}


@dataclass
class TargetModel:
    """One target's fitted model: a LightGBM booster, linear coefficients, or a constant."""

    kind: str  # "lightgbm" | "linear" | "constant"
    booster: Any = None
    coef: np.ndarray | None = None
    constant: float | None = None
    rounds: int | None = None

    def predict(self, x: np.ndarray, threads: int = 1) -> np.ndarray:
        if self.kind == "lightgbm":
            return np.asarray(self.booster.predict(x, num_threads=threads), dtype=float)
        if self.kind == "linear":
            return x @ self.coef
        return np.full(len(x), float(self.constant or 0.0))

    def as_json(self, file: str | None) -> dict[str, Any]:
        return {"chosen": self.kind, "rounds": self.rounds, "file": file if self.kind == "lightgbm" else None,
                "coef": self.coef.tolist() if self.coef is not None else None, "constant": self.constant}

    @classmethod
    def from_json(cls, info: Mapping[str, Any], folder: Path) -> "TargetModel":
        kind = info["chosen"]
        if kind == "lightgbm":
            import lightgbm as lgb

            return cls(kind, booster=lgb.Booster(model_file=str(folder / MODELS_DIR / info["file"])),
                       rounds=info.get("rounds"))
        if kind == "linear":
            return cls(kind, coef=np.asarray(info["coef"], dtype=float))
        return cls("constant", constant=float(info["constant"]))


def _predict_many(models: Mapping[str, TargetModel], x: np.ndarray, threads: int) -> dict[str, np.ndarray]:
    """Each model's predictions; rows split across threads (LightGBM's C calls release the GIL)."""
    x = np.ascontiguousarray(x, dtype=float)
    if threads <= 1 or len(x) < 4096:
        return {m: model.predict(x) for m, model in models.items()}
    chunks = np.array_split(x, threads)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        parts = {m: [pool.submit(model.predict, c) for c in chunks] for m, model in models.items()}
        return {m: np.concatenate([f.result() for f in fs]) for m, fs in parts.items()}


@dataclass
class Predictor:
    """What the solve needs: the sources (feature order), the objective's model and one model per metric."""

    sources: list[str]
    objective: Objective
    objective_model: TargetModel
    models: dict[str, TargetModel]
    threads: int = 0

    def predict(self, x: np.ndarray, metrics: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        chosen = {m: self.models[m] for m in (metrics if metrics is not None else self.models)}
        return _predict_many(chosen, x, self.threads or cpu_count())

    def predict_objective(self, x: np.ndarray) -> np.ndarray:
        return _predict_many({"objective": self.objective_model}, x, self.threads or cpu_count())["objective"]


@dataclass
class TargetFit:
    name: str
    model: TargetModel
    cv: dict[str, dict[str, float]]   # kind -> scores of its out-of-fold predictions
    oof: dict[str, np.ndarray]        # kind -> out-of-fold predictions
    actual: np.ndarray

    @property
    def chosen(self) -> str:
        return self.model.kind

    @property
    def chosen_oof(self) -> np.ndarray:
        return self.oof[self.chosen]

    def summary(self, file: str | None) -> dict[str, Any]:
        best: Mapping[str, float | None] = self.cv.get(self.chosen) or {"spearman": None, "pearson": None, "rmse": 0.0}
        return {**self.model.as_json(file), **best, "cv": self.cv}


@dataclass
class SwarmFit:
    sources: list[str]
    objective: Objective
    objective_fit: TargetFit
    metrics: dict[str, TargetFit]
    settings: FitSettings
    from_metrics: dict[str, float] = field(default_factory=dict)  # CV of the objective recombined from metrics

    def predictor(self) -> Predictor:
        return Predictor(self.sources, self.objective, self.objective_fit.model,
                         {m: f.model for m, f in self.metrics.items()}, self.settings.cpu_threads())

    def summary(self) -> dict[str, Any]:
        """fit.json's content (the job adds the swarm's own fields)."""
        return {
            "format_version": 1, "sources": self.sources, "objective": self.objective.as_json(),
            "convention": "objective = Σ weight·metric (minimize) − Σ weight·metric (maximize); lower is better",
            "runs": int(len(self.objective_fit.actual)), "regressor": self.settings.as_json(),
            "cv": {"objective": {**self.objective_fit.summary(OBJECTIVE_FILE), "from_metrics": self.from_metrics},
                   "metrics": {m: f.summary(model_file(m)) for m, f in self.metrics.items()}},
        }

    def save(self, out: Path, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        from runtime.outputs import atomic_write_json

        out = Path(out)
        (out / MODELS_DIR).mkdir(parents=True, exist_ok=True)
        files = [(self.objective_fit, OBJECTIVE_FILE), *((f, model_file(m)) for m, f in self.metrics.items())]
        for target, name in files:
            if target.model.kind == "lightgbm":
                tmp = out / MODELS_DIR / f".{name}.tmp"
                target.model.booster.save_model(str(tmp))
                os.replace(tmp, out / MODELS_DIR / name)
        data = {**self.summary(), **(extra or {})}
        atomic_write_json(out / FIT_FILE, data)
        return data


def model_file(metric: str) -> str:
    """models/<file> of a metric: `metric-` + its name with anything but [A-Za-z0-9._-] as '_' + `.txt`."""
    return "metric-" + re.sub(r"[^A-Za-z0-9._-]", "_", metric) + ".txt"


def kfold(n: int, k: int, seed: int) -> list[np.ndarray]:
    """K shuffled folds of range(n) (their test indices), reproducible from the seed."""
    perm = np.random.default_rng([int(seed) & 0xFFFFFFFF, 7]).permutation(n)
    return [np.sort(f) for f in np.array_split(perm, k)]


def _lgb_params(s: FitSettings, n_train: int) -> dict[str, Any]:
    return {"objective": "regression", "boosting": "gbdt", "learning_rate": s.learning_rate,
            "num_leaves": s.num_leaves, "min_data_in_leaf": max(2, min(20, n_train // 10)), "min_data_in_bin": 1,
            "max_bin": MAX_BIN,
            "feature_pre_filter": False, "force_col_wise": True, "deterministic": True, "seed": s.seed,
            "num_threads": 1, "verbose": -1, "metric": "l2"}


def _lightgbm_cv(x: np.ndarray, y: np.ndarray, folds: list[np.ndarray], s: FitSettings) -> tuple[np.ndarray, int]:
    """Out-of-fold predictions at the CV-chosen number of rounds, and that number."""
    import lightgbm as lgb

    n = len(y)
    pairs = [(np.setdiff1d(np.arange(n), test), test) for test in folds]
    params = _lgb_params(s, n - max(len(f) for f in folds))
    result = lgb.cv(params, lgb.Dataset(x, y, params=params), num_boost_round=s.num_rounds, folds=pairs,
                    stratified=False, shuffle=False, return_cvbooster=True, seed=s.seed,
                    callbacks=[lgb.early_stopping(s.early_stopping_rounds, verbose=False)])
    rounds = one_standard_error_rounds(np.asarray(result["valid l2-mean"]), np.asarray(result["valid l2-stdv"]),
                                       len(folds))
    cv_booster: Any = result["cvbooster"]
    oof = np.empty(n)
    for booster, (_, test) in zip(cv_booster.boosters, pairs):
        oof[test] = booster.predict(x[test], num_iteration=rounds, num_threads=1)
    return oof, rounds


def one_standard_error_rounds(mean: np.ndarray, stdv: np.ndarray, folds: int) -> int:
    """The fewest rounds whose mean CV loss is within one standard error of the best (Breiman's one-SE rule): at
    a small learning rate the CV curve flattens long before it turns up, and the rounds past that point cost
    prediction time (the solve scores every candidate with every tree) for no measurable gain."""
    best = int(np.argmin(mean))
    limit = mean[best] + stdv[best] / np.sqrt(folds)
    return int(np.flatnonzero(mean <= limit)[0]) + 1


def _lightgbm_fit(x: np.ndarray, y: np.ndarray, rounds: int, s: FitSettings) -> Any:
    import lightgbm as lgb

    params = _lgb_params(s, len(y))
    return lgb.train(params, lgb.Dataset(x, y, params=params), num_boost_round=rounds)


def _linear_fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    return coef


def fit_target(name: str, x: np.ndarray, y: np.ndarray, folds: list[np.ndarray], s: FitSettings) -> TargetFit:
    """Both models' CV on the same folds; the better one refit on every run."""
    if float(np.ptp(y)) == 0.0:
        return TargetFit(name, TargetModel("constant", constant=float(y[0])), {},
                         {"constant": np.full(len(y), float(y[0]))}, y)
    oof_gbm, rounds = _lightgbm_cv(x, y, folds, s)
    oof_lin = np.empty(len(y))
    for test in folds:
        train = np.setdiff1d(np.arange(len(y)), test)
        oof_lin[test] = x[test] @ _linear_fit(x[train], y[train])
    oof = {"lightgbm": oof_gbm, "linear": oof_lin}
    cv = {kind: scores(y, pred) for kind, pred in oof.items()}
    if cv["lightgbm"]["rmse"] <= cv["linear"]["rmse"]:
        model = TargetModel("lightgbm", booster=_lightgbm_fit(x, y, rounds, s), rounds=rounds)
    else:
        model = TargetModel("linear", coef=_linear_fit(x, y))
    return TargetFit(name, model, cv, oof, y)


def fit_swarm(weights: np.ndarray, metrics: Mapping[str, np.ndarray], sources: Sequence[str],
              objective: Objective, settings: FitSettings) -> SwarmFit:
    """Fit the objective and every metric in `metrics` (arrays over the runs, aligned with `weights`' rows)."""
    x = np.asarray(weights, dtype=float)
    n = len(x)
    missing = [m for m in objective.metrics if m not in metrics]
    if missing:
        raise ValueError(f"objective metrics {missing} not among the metrics ({', '.join(metrics)})")
    if n < settings.min_runs():
        raise ValueError(f"{n} runs: a {settings.cv_folds}-fold CV needs at least {settings.min_runs()}")
    folds = kfold(n, settings.cv_folds, settings.seed)
    targets = {m: np.asarray(y, dtype=float) for m, y in metrics.items()}
    actual = np.asarray(objective(targets), dtype=float)
    with ThreadPoolExecutor(max_workers=settings.cpu_threads()) as pool:  # LightGBM's C calls release the GIL
        pending = {m: pool.submit(fit_target, m, x, y, folds, settings) for m, y in targets.items()}
        whole = pool.submit(fit_target, "objective", x, actual, folds, settings)
        fits = {m: f.result() for m, f in pending.items()}
        objective_fit = whole.result()
    recombined = np.asarray(objective({m: fits[m].chosen_oof for m in objective.metrics}), dtype=float)
    return SwarmFit(list(sources), objective, objective_fit, fits, settings, scores(actual, recombined))


def load_fit(folder: Path) -> tuple[dict[str, Any], Predictor]:
    """fit.json and the predictor of its models, from a folder `SwarmFit.save` wrote."""
    folder = Path(folder)
    data = json.loads((folder / FIT_FILE).read_text(encoding="utf-8"))
    models = {m: TargetModel.from_json(info, folder) for m, info in data["cv"]["metrics"].items()}
    return data, Predictor(list(data["sources"]), Objective.from_config(data["objective"]),
                           TargetModel.from_json(data["cv"]["objective"], folder), models)
