"""`recipe mix fit`: fit (and solve, and predict with) a swarm trained elsewhere, from CSV files.

    recipe mix fit --ratios R.csv --metrics M.csv --objective NAME[:min|max][=WEIGHT] ... \
                   [--predict CANDIDATES.csv] [--solve] [--json] [--out DIR] [--folds 5] [--seed 0] ...

R.csv: run id, then one column per source (each row's ratios sum to 1); M.csv: run id, then one column per metric;
joined on the run id (`runtime.regmix.tables`). The objective is the weighted sum of the named metrics, a
maximised one with a minus sign: lower is better (`runtime.regmix.objective`; direction min and weight 1 unless
given). Every metric column is fitted (LightGBM and linear, K-fold CV: `runtime.regmix.fit`) and so is the
objective; the CV table goes to stdout (or JSON with --json).

- `--solve`: candidates from a Dirichlet centred on the swarm's mean ratios (the swarm's own prior, as far as the
  CSV tells), concentration in [0.1, 5], top-k averaged (`runtime.regmix.solve`); "natural" is that mean mix.
- `--predict C.csv` (same columns as R.csv): stdout is CSV only, `<run id column>,predicted_objective` per row in
  C.csv's order, from the objective's model; the report goes to stderr.
- `--out DIR`: fit.json, models/, plots/ (and mix.json, tradeoff.txt with --solve).
Bad input: one `FILE:LINE: message` line per problem on stderr, exit 2.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any, TextIO

EXIT_USER_ERROR = 2


def _load(args: argparse.Namespace) -> tuple[Any, Any, list[str], Any, Any]:
    """(objective, ratios, joined ids, metrics, candidates) or TableError with every problem found."""
    from runtime.regmix.objective import Objective, parse_objective_arg
    from runtime.regmix.tables import (TableError, check_candidates, check_join, check_objective, check_ratios,
                                       read_table)

    errors: list[str] = []
    terms = []
    for text in args.objective:
        try:
            terms.append(parse_objective_arg(text))
        except ValueError as exc:
            errors.append(f"recipe mix fit: --objective {text!r}: {exc}")
    ratios = read_table(args.ratios, "ratio", errors)
    metrics = read_table(args.metrics, "metric", errors)
    candidates = read_table(args.predict, "candidate", errors) if args.predict else None
    if ratios is not None:
        check_ratios(ratios, errors)
    if candidates is not None:
        check_ratios(candidates, errors)
        if ratios is not None:
            check_candidates(candidates, ratios.columns, errors)
    ids: list[str] = []
    if ratios is not None and metrics is not None:
        ids = check_join(ratios, metrics, errors)
    if metrics is not None:
        check_objective(metrics, [t.metric for t in terms], errors)
    if errors:
        raise TableError(errors)
    return Objective(tuple(terms)), ratios, ids, metrics, candidates


def run(args: argparse.Namespace, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """`recipe mix fit`: 0, or 2 with one line per input problem on stderr."""
    from runtime.regmix.tables import TableError

    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr

    try:
        objective, ratios, ids, metrics, candidates = _load(args)
        return _fit_and_report(args, objective, ratios, ids, metrics, candidates, stdout, stderr)
    except TableError as exc:
        for line in exc.shown():
            print(line, file=stderr)
        return EXIT_USER_ERROR


def _fit_and_report(args: argparse.Namespace, objective: Any, ratios: Any, ids: list[str], metrics: Any,
                    candidates: Any, stdout: TextIO, stderr: TextIO) -> int:
    import numpy as np

    from runtime.regmix.fit import FitSettings, fit_swarm
    from runtime.regmix.tables import TableError

    settings = FitSettings(learning_rate=args.learning_rate, num_rounds=args.rounds, num_leaves=args.leaves,
                           early_stopping_rounds=args.early_stopping, cv_folds=args.folds, seed=args.seed)
    if args.folds < 2:
        raise TableError([f"recipe mix fit: --folds {args.folds}: at least 2"])
    if len(ids) < settings.min_runs():
        raise TableError([f"{ratios.path}:{ratios.header_line}: {len(ids)} runs in both files; a {args.folds}-fold "
                          f"CV needs at least {settings.min_runs()}"])
    rows = {r: i for i, r in enumerate(ratios.ids)}
    mrows = {r: i for i, r in enumerate(metrics.ids)}
    x = np.array([ratios.rows[rows[r]] for r in ids])
    y = np.array([metrics.rows[mrows[r]] for r in ids])
    fit = fit_swarm(x, {m: y[:, j] for j, m in enumerate(metrics.columns)}, ratios.columns, objective, settings)
    report: dict[str, Any] = {"fit": fit.summary()}
    result = None
    if args.solve:
        result = _solve(args, fit, x)
        report["solve"] = result.as_json()
    if args.out:
        _write(args, fit, result)
    out = stdout
    if candidates is not None:
        order = [candidates.columns.index(s) for s in ratios.columns]
        c = np.array(candidates.rows)[:, order]
        predicted = fit.predictor().predict_objective(c)
        writer = csv.writer(stdout, lineterminator="\n")
        writer.writerow([ratios.id_column, "predicted_objective"])
        for run_id, value in zip(candidates.ids, predicted):
            writer.writerow([run_id, f"{value:.6g}"])
        out = stderr
    print(json.dumps(report, indent=2, default=float) if args.json else _text(fit, result), file=out)
    return 0


def _solve(args: argparse.Namespace, fit: Any, x: Any) -> Any:
    from runtime.regmix.sampling import Sampler, rng_for
    from runtime.regmix.solve import solve

    centre = dict(zip(fit.sources, x.mean(axis=0).tolist()))
    sampler = Sampler.from_config(centre, {"prior": "tokens", "temperature": 1.0, "concentration": (0.1, 5.0)})
    return solve(fit.predictor(), sampler, candidates=args.candidates, top_k=min(args.top_k, args.candidates),
                 rng=rng_for(args.seed, "solve"), natural=centre)


def _write(args: argparse.Namespace, fit: Any, result: Any) -> None:
    from runtime.outputs import atomic_write_json, atomic_write_text
    from runtime.regmix.jobs import PLOTS_DIR, write_fit
    from runtime.regmix.plots import mix_plot

    out = Path(args.out)
    write_fit(fit, out, {"ratios": str(args.ratios), "metrics_file": str(args.metrics)})
    if result is not None:
        atomic_write_json(out / "mix.json", {**result.as_json(), "cv": fit.summary()["cv"]})
        atomic_write_text(out / "tradeoff.txt", result.table() + "\n")
        mix_plot(result, out / PLOTS_DIR / "mix.png")


def _fmt(value: Any) -> str:
    return "—" if value is None else f"{value:.3f}"


def _text(fit: Any, result: Any) -> str:
    from compiler.table import text_table

    s = fit.settings
    rows = []
    for name, target in [("objective", fit.objective_fit), *fit.metrics.items()]:
        chosen = target.cv.get(target.chosen, {})
        rows.append([name, target.chosen, str(target.model.rounds or "—"), _fmt(chosen.get("spearman")),
                     _fmt(chosen.get("pearson")), _fmt(target.cv.get("lightgbm", {}).get("spearman")),
                     _fmt(target.cv.get("linear", {}).get("spearman"))])
    head = (f"{len(fit.objective_fit.actual)} runs × {len(fit.sources)} sources, {len(fit.metrics)} metrics; "
            f"{s.cv_folds}-fold CV, LightGBM lr {s.learning_rate:g}, ≤ {s.num_rounds} rounds, {s.num_leaves} leaves\n"
            f"objective: {fit.objective.describe()}\n"
            f"objective recombined from the metrics' CV predictions: Spearman {_fmt(fit.from_metrics.get('spearman'))}, "
            f"Pearson {_fmt(fit.from_metrics.get('pearson'))}\n\n")
    table = text_table(["target", "model", "rounds", "Spearman", "Pearson", "lightgbm ρ", "linear ρ"], rows,
                       right=(2, 3, 4, 5, 6))
    solved = f"\n\nsolve: top {result.top_k} of {result.candidates:,} candidates\n{result.table()}" if result else ""
    return head + table + solved
