"""RegMix runtime (runtime/regmix/): sampling, fit, solve, the fit/solve jobs, `recipe mix fit`, the proxy task.

Synthetic swarms with a known ground truth (runtime.regmix.synthetic) stand in for trained proxies; the one real
proxy training (a few steps on a toy world) is marked slow.
Run: `python -m pytest tests/runtime/test_regmix.py -q -p no:cacheprovider` (about 30 s on 2 cores).
"""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import REPO, TINY_FULL, run_main, subprocess_env, tiny_full_portable
from runtime.regmix.fit import FitSettings, fit_swarm
from runtime.regmix.objective import Objective, parse_objective_arg
from runtime.regmix.proxy import proxy_job, swarm_weights
from runtime.regmix.sampling import HopelessBounds, Sampler, natural_weights, rng_for
from runtime.regmix.solve import solve
from runtime.regmix.synthetic import OBJECTIVE, Truth

TOKENS = {"arithmetic": 2_000_000, "code": 1_000_000, "text": 4_000_000, "words": 1_000_000}
SAMPLING = {"distribution": "dirichlet", "prior": "tokens", "temperature": 1.0, "concentration": [0.5, 5.0]}
FAST = FitSettings(learning_rate=0.05, num_rounds=400, early_stopping_rounds=30, cv_folds=4, seed=0)


def swarm_config(seed: int = 0, size: int = 24, bounds: dict[str, list[float]] | None = None) -> dict[str, Any]:
    sources = {n: {"path": f"../data/toy/{n}", "split": "train", "eval_split": "validation", "text_field": "text",
                   "hf": None, "subset": None, "tokens": t} for n, t in TOKENS.items()}
    return {"sources": sources, "sampling": SAMPLING, "seed": seed, "swarm_size": size,
            "bounds": bounds if bounds is not None else {n: [0.0, 1.0] for n in TOKENS}}


# --------------------------------------------------------------------------- sampling


def test_swarm_is_deterministic_from_the_seed() -> None:
    sources, a = swarm_weights(swarm_config(seed=0))
    _, b = swarm_weights(swarm_config(seed=0))
    _, c = swarm_weights(swarm_config(seed=1))
    assert sources == tuple(TOKENS)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)
    assert np.allclose(a.sum(axis=1), 1.0)
    # a bigger swarm starts with the same mixtures: task i of any array agrees on mixture i
    _, big = swarm_weights(swarm_config(seed=0, size=200))
    assert np.array_equal(big[:24], a)


def test_swarm_is_centred_on_the_token_prior_and_varied() -> None:
    _, w = swarm_weights(swarm_config(size=4000))
    prior = np.array(list(natural_weights(TOKENS).values()))
    assert np.allclose(w.mean(axis=0), prior, atol=0.03)
    assert w.max(axis=1).mean() > 0.6  # small concentrations: many mixtures dominated by one source
    uniform = Sampler.from_config(TOKENS, {**SAMPLING, "prior": "uniform"})
    assert np.allclose(uniform.sample(4000, rng_for(0, "swarm")).mean(axis=0), 0.25, atol=0.03)
    hot = Sampler.from_config(TOKENS, {**SAMPLING, "temperature": 100.0})
    assert np.allclose(hot.prior, 0.25, atol=0.01)


def test_swarm_and_solve_respect_the_bounds() -> None:
    bounds = {"arithmetic": [0.0, 0.5], "code": [0.05, 0.3], "text": [0.2, 1.0], "words": [0.0, 0.1]}
    _, w = swarm_weights(swarm_config(size=500, bounds=bounds))
    low = np.array([b[0] for b in bounds.values()])
    high = np.array([b[1] for b in bounds.values()])
    assert ((w >= low - 1e-9) & (w <= high + 1e-9)).all()
    truth, x, metrics = synthetic_swarm(4, 120)
    sampler = Sampler.from_config(truth.tokens, {"concentration": [0.5, 5.0]},
                                  {"math": [0.0, 0.2], "code": [0.1, 0.5]})
    fit = fit_swarm(x, metrics, truth.sources, Objective.from_config(OBJECTIVE), FAST)
    result = solve(fit.predictor(), sampler, candidates=5000, top_k=32, rng=rng_for(0, "solve"))
    assert 0.0 <= result.weights[0] <= 0.2 + 1e-9 and 0.1 - 1e-9 <= result.weights[1] <= 0.5 + 1e-9
    assert result.weights.sum() == pytest.approx(1.0)


def test_hopeless_bounds_are_a_clear_error() -> None:
    bounds = {"arithmetic": [0.0, 1.0], "code": [0.49, 1.0], "text": [0.0, 1.0], "words": [0.49, 1.0]}
    with pytest.raises(HopelessBounds) as info:
        swarm_weights(swarm_config(bounds=bounds))
    message = str(info.value)
    assert "the bounds accept" in message and "code ≥ 0.49" in message and "words ≥ 0.49" in message
    assert "widen min_weight/max_weight" in message


def test_bounds_naming_an_unknown_source_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown sources"):
        Sampler.from_config(TOKENS, SAMPLING, {"txt": [0.1, 1.0]})


# --------------------------------------------------------------------------- objective, fit, solve


def test_objective_convention_lower_is_better() -> None:
    objective = Objective.from_config(OBJECTIVE)
    base = {"web/bpb": 1.0, "math/acc": 0.5, "code/bpb": 1.0}
    assert objective({**base, "math/acc": 0.9}) < objective(base)  # more accuracy: lower objective
    assert objective({**base, "web/bpb": 0.8}) < objective(base)   # fewer bits: lower objective
    assert float(objective(base)) == pytest.approx(0.6 * 1.0 - 0.3 * 0.5 + 0.1 * 1.0)
    assert parse_objective_arg("tasks/a/exact_match:max=0.2").direction == "maximize"
    assert parse_objective_arg("bpb/text/bpb").weight == 1.0
    for bad in ("x:mid", "x=abc", "x=-1", ":max"):
        with pytest.raises(ValueError):
            parse_objective_arg(bad)


def synthetic_swarm(sources: int, runs: int, seed: int = 0) -> tuple[Truth, np.ndarray, dict[str, np.ndarray]]:
    truth = Truth.make(sources, seed)
    sampler = Sampler.from_config(truth.tokens, {"concentration": [0.1, 5.0]})
    x = sampler.sample(runs, rng_for(seed, "swarm"))
    return truth, x, truth.metrics(x, noise=0.05, rng=np.random.default_rng(seed + 1))


@pytest.fixture(scope="module")
def fitted() -> tuple[Truth, np.ndarray, Any]:
    truth, x, metrics = synthetic_swarm(5, 192)
    return truth, x, fit_swarm(x, metrics, truth.sources, Objective.from_config(OBJECTIVE), FAST)


def test_fit_recovers_a_known_ground_truth(fitted: tuple[Truth, np.ndarray, Any]) -> None:
    truth, x, fit = fitted
    objective = fit.objective_fit
    assert objective.cv[objective.chosen]["spearman"] >= 0.9
    assert fit.from_metrics["spearman"] >= 0.9
    summary = fit.summary()
    assert summary["sources"] == list(truth.sources)
    for metric in ("web/bpb", "math/acc", "code/bpb"):
        info = summary["cv"]["metrics"][metric]
        assert set(info["cv"]) == {"lightgbm", "linear"} and info["chosen"] in ("lightgbm", "linear")
        assert info["spearman"] == info["cv"][info["chosen"]]["spearman"]
    # the linear baseline cannot follow the saturating truth: LightGBM wins on the objective
    assert objective.cv["lightgbm"]["rmse"] < objective.cv["linear"]["rmse"]


def test_solve_finds_a_mix_near_the_known_optimum(fitted: tuple[Truth, np.ndarray, Any]) -> None:
    truth, x, fit = fitted
    sampler = Sampler.from_config(truth.tokens, {"concentration": [0.1, 5.0]})
    natural = natural_weights(truth.tokens)
    result = solve(fit.predictor(), sampler, candidates=20_000, top_k=64, rng=rng_for(0, "solve"), natural=natural)
    probe = truth.objective(sampler.sample(100_000, np.random.default_rng(9)))
    best, median = probe.min(), np.median(truth.objective(x))
    chosen = truth.objective(result.weights)[0]
    assert chosen <= best + 0.1 * (median - best), (chosen, best, median)
    assert chosen < truth.objective(np.array(list(natural.values())))[0]
    mix = result.as_json()
    assert set(mix) >= {"weights", "predicted", "objective", "natural", "delta"}
    assert mix["delta"]["math/acc"] == pytest.approx(mix["predicted"]["math/acc"] - mix["natural"]["predicted"]["math/acc"])
    again = solve(fit.predictor(), sampler, candidates=20_000, top_k=64, rng=rng_for(0, "solve"), natural=natural)
    other = solve(fit.predictor(), sampler, candidates=20_000, top_k=64, rng=rng_for(1, "solve"), natural=natural)
    assert np.array_equal(again.weights, result.weights) and not np.array_equal(other.weights, result.weights)
    assert "objective (lower is better)" in result.table()


def test_a_constant_metric_gets_a_constant_model() -> None:
    truth, x, metrics = synthetic_swarm(4, 40)
    metrics["flat/acc"] = np.zeros(len(x))
    fit = fit_swarm(x, metrics, truth.sources, Objective.from_config(OBJECTIVE), FAST)
    assert fit.metrics["flat/acc"].chosen == "constant"
    assert fit.predictor().predict(x[:3], ["flat/acc"])["flat/acc"].tolist() == [0.0, 0.0, 0.0]


# --------------------------------------------------------------------------- the fit and solve jobs


def fake_swarm(tmp: Path, size: int, with_metrics: int | None = None) -> tuple[Path, Path, Truth]:
    """A swarm folder (swarm.json, proxy-*/mix.json) and an eval folder (proxy-*/metrics.json) from the truth."""
    truth = Truth.make(4, 0)
    config = {"sources": {n: {"tokens": t} for n, t in truth.tokens.items()}, "sampling": {"concentration": [0.1, 5]},
              "seed": 0, "swarm_size": size, "bounds": {}}
    sources, w = swarm_weights(config)
    metrics = truth.metrics(w, noise=0.03, rng=np.random.default_rng(0))
    swarm, evals = tmp / "swarm", tmp / "evals"
    from runtime.regmix.proxy import swarm_record

    swarm.mkdir(parents=True)
    (swarm / "swarm.json").write_text(json.dumps(swarm_record(config, sources, w)))
    for i in range(size):
        (swarm / f"proxy-{i:05d}").mkdir()
        (swarm / f"proxy-{i:05d}" / "mix.json").write_text(json.dumps({"index": i, "weights": dict(zip(sources, w[i].tolist()))}))
        if with_metrics is None or i < with_metrics:
            (evals / f"proxy-{i:05d}").mkdir(parents=True)
            values = {m: float(v[i]) for m, v in metrics.items()}
            (evals / f"proxy-{i:05d}" / "metrics.json").write_text(json.dumps({"metrics": values}))
    return swarm, evals, truth


def job(id: str, kind: str, config: dict[str, Any]) -> dict[str, Any]:
    return {"id": id, "kind": kind, "hash": "ab" * 32, "recipe": "t", "recipe_dir": ".", "config": config}


FIT_CONFIG = {"regressor": {"kind": "lightgbm", "learning_rate": 0.05, "num_rounds": 300, "num_leaves": 31,
                            "early_stopping_rounds": 30, "cv_folds": 4},
              "objective": OBJECTIVE, "seed": 0, "metrics_job": "mix-swarm-eval"}


def test_fit_and_solve_jobs_write_the_mix_pretraining_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from runtime.lm_data import resolve_weights
    from runtime.regmix import run_fit, run_solve

    swarm, evals, truth = fake_swarm(tmp_path, 64)
    monkeypatch.setenv("RECIPE_INPUT_MIX_SWARM", str(swarm))
    monkeypatch.setenv("RECIPE_INPUT_MIX_SWARM_EVAL", str(evals))
    monkeypatch.setenv("RECIPE_OUTPUT_DIR", str(tmp_path / "fit"))
    run_fit(job("mix-fit", "regmix_fit", FIT_CONFIG))
    fit = json.loads((tmp_path / "fit" / "fit.json").read_text())
    assert fit["sources"] == list(truth.sources) and fit["cv"]["objective"]["spearman"] > 0.8
    assert (tmp_path / "fit" / "plots" / "cv-objective.png").is_file()
    assert json.loads((tmp_path / "fit" / "DONE.json").read_text())["metrics"]["cv_spearman"] > 0.8

    bounds = {"math": [0.0, 0.4], "code": [0.05, 1.0]}
    monkeypatch.setenv("RECIPE_INPUT_MIX_FIT", str(tmp_path / "fit"))
    monkeypatch.setenv("RECIPE_OUTPUT_DIR", str(tmp_path / "solve"))
    solve_config = {"solver": {"candidates": 5000, "top_k": 16}, "bounds": bounds,
                    "sampling": {"concentration": [0.1, 5.0]}, "seed": 0}
    run_solve(job("mix-solve", "regmix_solve", solve_config))
    mix = json.loads((tmp_path / "solve" / "mix.json").read_text())
    assert set(mix) >= {"weights", "predicted", "objective", "natural", "delta", "cv"}
    assert mix["weights"]["math"] <= 0.4 + 1e-9 and mix["weights"]["code"] >= 0.05 - 1e-9
    assert (tmp_path / "solve" / "plots" / "mix.png").is_file()
    assert "objective (lower is better)" in json.loads((tmp_path / "solve" / "DONE.json").read_text())["tradeoff"]
    pretrain = job("pretrain", "pretrain", {"data": {"sources": {n: {} for n in truth.sources},
                                                     "weights": {"from_job": "mix-solve", "file": "mix.json"}}})
    monkeypatch.setenv("RECIPE_INPUT_MIX_SOLVE", str(tmp_path / "solve"))
    assert resolve_weights(pretrain) == pytest.approx({k: v for k, v in sorted(mix["weights"].items()) if v > 0})


def test_fit_refuses_too_few_proxies_with_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from runtime.regmix.jobs import FitInputError, run_fit

    swarm, evals, _ = fake_swarm(tmp_path, 24, with_metrics=5)
    monkeypatch.setenv("RECIPE_INPUT_MIX_SWARM", str(swarm))
    monkeypatch.setenv("RECIPE_INPUT_MIX_SWARM_EVAL", str(evals))
    monkeypatch.setenv("RECIPE_OUTPUT_DIR", str(tmp_path / "fit"))
    with pytest.raises(FitInputError, match=r"5 of 24 proxies .* \(e\.g\. proxy-00005, .*at least 8"):
        run_fit(job("mix-fit", "regmix_fit", FIT_CONFIG))
    assert not (tmp_path / "fit" / "DONE.json").exists()


# --------------------------------------------------------------------------- recipe mix fit (CSV)


def write_csvs(tmp: Path, runs: int = 48) -> tuple[Path, Path, Path]:
    truth, x, metrics = synthetic_swarm(4, runs)
    ratios, table, cands = tmp / "R.csv", tmp / "M.csv", tmp / "C.csv"
    with ratios.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", *truth.sources])
        w.writerows([[f"r{i}", *[f"{v:.8f}" for v in row]] for i, row in enumerate(x)])
    with table.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", *metrics])
        w.writerows([[f"r{i}", *[f"{metrics[m][i]:.6f}" for m in metrics]] for i in range(runs)])
    with cands.open("w", newline="") as f:  # the same sources in another order
        w = csv.writer(f)
        w.writerow(["id", *reversed(truth.sources)])
        w.writerows([[f"c{i}", *[f"{v:.8f}" for v in reversed(row)]] for i, row in enumerate(x[:5])])
    return ratios, table, cands


OBJ_ARGS = ["--objective", "web/bpb=0.6", "--objective", "math/acc:max=0.3", "--objective", "code/bpb=0.1"]
QUICK = ["--folds", "4", "--rounds", "200", "--learning-rate", "0.05"]


def mix_fit(*args: object) -> Any:
    return run_main(["mix", "fit", *args])


def test_mix_fit_reports_cv_and_solves(tmp_path: Path) -> None:
    ratios, metrics, _ = write_csvs(tmp_path)
    result = mix_fit("--ratios", ratios, "--metrics", metrics, *OBJ_ARGS, *QUICK, "--solve", "--candidates", "2000",
                     "--top-k", "16", "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["fit"]["cv"]["objective"]["spearman"] > 0.8
    assert abs(sum(report["solve"]["weights"].values()) - 1) < 1e-9
    text = mix_fit("--ratios", ratios, "--metrics", metrics, *OBJ_ARGS, *QUICK)
    assert text.code == 0 and "objective" in text.out and "Spearman" in text.out


def test_mix_fit_predict_writes_csv(tmp_path: Path) -> None:
    ratios, metrics, cands = write_csvs(tmp_path)
    result = mix_fit("--ratios", ratios, "--metrics", metrics, *OBJ_ARGS, *QUICK, "--predict", cands)
    assert result.code == 0, result.err
    rows = list(csv.reader(result.out.splitlines()))
    assert rows[0] == ["run", "predicted_objective"]
    assert [r[0] for r in rows[1:]] == [f"c{i}" for i in range(5)]
    values = [float(r[1]) for r in rows[1:]]
    assert all(np.isfinite(values)) and len(set(values)) > 1
    assert "Spearman" in result.err  # the report goes to stderr when stdout is the CSV


def corrupt(path: Path, line: int, old: str, new: str) -> None:
    lines = path.read_text().splitlines()
    assert old in lines[line - 1], lines[line - 1]
    lines[line - 1] = lines[line - 1].replace(old, new, 1)
    path.write_text("\n".join(lines) + "\n")


def one_error(result: Any, prefix: str) -> str:
    assert result.code == 2, (result.code, result.err)
    lines = result.err_lines
    assert len(lines) == 1, lines
    assert lines[0].startswith(prefix), lines
    assert "Traceback" not in result.err and result.out == ""
    return lines[0]


@pytest.mark.parametrize("case", ["non-numeric", "empty cell", "sum", "missing in metrics", "missing in ratios",
                                  "unknown metric", "ragged", "duplicate id", "bad objective"])
def test_mix_fit_bad_input_is_one_line(tmp_path: Path, case: str) -> None:
    ratios, metrics, _ = write_csvs(tmp_path)
    args = ["--ratios", ratios, "--metrics", metrics, *OBJ_ARGS, *QUICK]
    first = ratios.read_text().splitlines()[3].split(",")
    if case == "non-numeric":
        corrupt(ratios, 4, first[2], "abc")
        assert "'abc' is not a finite number" in one_error(mix_fit(*args), f"{ratios}:4: column 'code' of run 'r2'")
    elif case == "empty cell":
        corrupt(metrics, 6, "r4,", "r4,,")
        lines = metrics.read_text().splitlines()
        lines[5] = ",".join(lines[5].split(",")[:2] + lines[5].split(",")[3:])
        metrics.write_text("\n".join(lines) + "\n")
        one_error(mix_fit(*args), f"{metrics}:6: column 'web/bpb' of run 'r4': empty cell")
    elif case == "sum":
        cells = ratios.read_text().splitlines()[9].split(",")
        corrupt(ratios, 10, cells[1], f"{float(cells[1]) + 0.05:.8f}")
        assert "not 1 (tolerance 0.001)" in one_error(mix_fit(*args), f"{ratios}:10: ratios of run 'r8' sum to")
    elif case == "missing in metrics":
        lines = metrics.read_text().splitlines()
        metrics.write_text("\n".join(lines[:7] + lines[8:]) + "\n")  # drop r6
        one_error(mix_fit(*args), f"{ratios}:8: run 'r6' has no row in {metrics}")
    elif case == "missing in ratios":
        with metrics.open("a") as f:
            f.write("r999,1,0.5,1\n")
        one_error(mix_fit(*args), f"{metrics}:50: run 'r999' has no row in {ratios}")
    elif case == "unknown metric":
        message = one_error(mix_fit("--ratios", ratios, "--metrics", metrics, "--objective", "web/bpd", *QUICK),
                            f"{metrics}:1: objective metric 'web/bpd' is not a column")
        assert "did you mean 'web/bpb'" in message
    elif case == "ragged":
        corrupt(ratios, 5, "r3,", "r3,0,")
        one_error(mix_fit(*args), f"{ratios}:5: 6 cells, the header has 5")
    elif case == "duplicate id":
        with metrics.open("a") as f:
            f.write(metrics.read_text().splitlines()[5] + "\n")
        one_error(mix_fit(*args), f"{metrics}:50: run 'r4' appears again (first on line 6)")
    else:
        one_error(mix_fit("--ratios", ratios, "--metrics", metrics, "--objective", "web/bpb:mid"),
                  "recipe mix fit: --objective 'web/bpb:mid': direction 'mid'")


def test_mix_fit_candidates_must_have_the_ratios_columns(tmp_path: Path) -> None:
    ratios, metrics, cands = write_csvs(tmp_path)
    text = cands.read_text().replace("id,s03", "id,s3", 1)
    cands.write_text(text)
    result = mix_fit("--ratios", ratios, "--metrics", metrics, *OBJ_ARGS, *QUICK, "--predict", cands)
    assert result.code == 2 and all(line.startswith(f"{cands}:1: ") for line in result.err_lines), result.err
    assert "missing source column(s) s03" in result.err and "unknown column(s) s3" in result.err


def test_too_few_runs_is_one_line(tmp_path: Path) -> None:
    ratios, metrics, _ = write_csvs(tmp_path, runs=6)
    one_error(mix_fit("--ratios", ratios, "--metrics", metrics, *OBJ_ARGS, *QUICK),
              f"{ratios}:1: 6 runs in both files; a 4-fold CV needs at least 8")


# --------------------------------------------------------------------------- the proxy task


def test_proxy_job_from_the_compiled_plan(tmp_path: Path) -> None:
    """The tiny-think-full plan's mix-swarm config turns into a pretraining job run_lm accepts."""
    from compiler.build import compile_recipe

    recipe = tmp_path / "tiny-think-full.yaml"
    recipe.write_text(tiny_full_portable())
    plan = compile_recipe(str(recipe), []).plan
    swarm = next(j for j in plan["jobs"] if j["id"] == "mix-swarm")
    swarm = {**swarm, "recipe": "tiny-think-full", "recipe_dir": str(TINY_FULL.parent)}
    sources, weights = swarm_weights(swarm["config"])
    bounds = swarm["config"]["bounds"]
    assert all(bounds[s][0] - 1e-9 <= w <= bounds[s][1] + 1e-9 for row in weights for s, w in zip(sources, row))
    mixture = dict(zip(sources, weights[3].tolist()))
    proxy = proxy_job(swarm, 3, mixture)
    cfg, spec = proxy["config"], swarm["config"]["proxy"]
    assert proxy["kind"] == "pretrain" and proxy["id"] == "mix-swarm.proxy-00003"
    assert cfg["model"] == spec["model"] and cfg["data"]["weights"] == mixture
    assert cfg["scale"]["steps"] * cfg["scale"]["global_batch_sequences"] * cfg["scale"]["seq_len"] >= spec["tokens"]
    assert cfg["optim"]["lr"] == spec["lr"] and cfg["tokenizer"] == swarm["config"]["tokenizer"]
    assert cfg["seed"] == swarm["config"]["seed"]  # every proxy starts from the same initial weights


def test_entries_resolve_without_heavy_imports() -> None:
    code = ("import json, sys\nfrom runtime.run_job import resolve_entry\n"
            "found = [resolve_entry(f'runtime.regmix:{e}') is not None for e in ('run_proxy', 'run_fit', 'run_solve')]\n"
            "print(json.dumps([found, sorted(m for m in sys.modules if m.split('.')[0] in "
            "('numpy', 'lightgbm', 'torch', 'matplotlib'))]))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [[True, True, True], []]


@pytest.mark.slow
def test_run_proxy_trains_exports_and_skips_when_done(tmp_path: Path) -> None:
    """One real proxy: a few steps on a small toy world (runtime.toyworld), then a rerun that skips it."""
    toy = tmp_path / "toy"
    subprocess.run([sys.executable, "-m", "runtime.toyworld", str(toy), "--scale", "0.02"], cwd=REPO, check=True,
                   env=subprocess_env(), capture_output=True)
    config = swarm_config(size=4)
    for name, source in config["sources"].items():
        source["path"] = f"toy/{name}"
    config.update(proxy={"model": {"family": "llama3", "vocab_size": 1024, "d_model": 32, "n_layers": 1, "n_heads": 2,
                                   "n_kv_heads": 1, "head_dim": 16, "ffn_hidden": 64, "max_seq_len": 64,
                                   "dtype": "float32", "norm_eps": 1e-5, "qk_norm": "none", "rope_scaling": None,
                                   "rope_theta": 10000.0, "sliding_window": None, "tie_embeddings": True},
                          "tokens": 3 * 8 * 64, "seq_len": 64, "global_batch_sequences": 8, "micro_batch_size": None,
                          "lr": 3e-3, "gpus": 0},
                  tokenizer="toy/tokenizer", objective=[])
    config_path = tmp_path / "swarm.config.json"
    config_path.write_text(json.dumps({**job("mix-swarm", "regmix_swarm", config), "recipe_dir": str(tmp_path)}))
    out = tmp_path / "out"
    env = subprocess_env(RECIPE_OUTPUT_DIR=str(out), RECIPE_ARRAY_INDEX="2", OMP_NUM_THREADS="2")
    cmd = [sys.executable, "-m", "runtime.run_job", "--config", str(config_path), "--entry", "runtime.regmix:run_proxy"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = out / "proxy-00002"
    done = json.loads((folder / "DONE.json").read_text())
    mix = json.loads((folder / "mix.json").read_text())
    assert mix["index"] == 2 and done["step"] == 3
    assert (folder / "hf" / "model.safetensors").is_file() and not (folder / "checkpoint").exists()
    swarm = json.loads((out / "swarm.json").read_text())
    assert swarm["mixtures"][2] == mix["weights"]
    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "already done" in again.stdout
