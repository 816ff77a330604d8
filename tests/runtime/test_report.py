"""`recipe report`: tables of one run and of two runs side by side, the Markdown file and its PNG charts, and the
one-line errors; on small synthetic run folders laid out as the launcher and the eval contract write them
(state.json, per-job config.json, eval jobs' metrics.json and DONE.json, training jobs' DONE.json)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from runtime.report import report
from runtime.report.collect import ReportError, load_run, stage_order
from runtime.report.text import delta, direction
from tests.conftest import run_subprocess

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# plan order: the training stages, each followed by its eval job; `long-context` has no eval job
STAGES = ["pretrain", "midtrain", "long-context", "sft", "dpo"]
# a second model of one stage (as the compiler plans RL's random-reward control): own column, own eval job
STAGE_OF = {"rlvr-random-reward": "rlvr"}

BASE = {  # run A's lm-eval metrics per stage
    "pretrain": {"toy/arithmetic/bpb": 0.6309, "toy/text/bpb": 0.3471, "tasks/toy_arith/exact_match": 0.0,
                 "tasks/toy_mc/acc": 0.25, "tasks/macro/exact_match": 0.0},
    "midtrain": {"toy/arithmetic/bpb": 0.5876, "toy/text/bpb": 0.3413, "tasks/toy_arith/exact_match": 0.03125,
                 "tasks/toy_mc/acc": 0.3, "tasks/macro/exact_match": 0.03125},
    "sft": {"toy/arithmetic/bpb": 0.61, "toy/text/bpb": 0.40, "tasks/toy_arith/exact_match": 0.21875,
            "tasks/toy_mc/acc": 0.45, "tasks/macro/exact_match": 0.21875},
    "dpo": {"toy/arithmetic/bpb": 0.62, "toy/text/bpb": 0.41, "tasks/toy_arith/exact_match": 0.25,
            "tasks/toy_mc/acc": 0.5, "tasks/macro/exact_match": 0.25},
}


def _write(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def _job(run_dir: Path, state: dict[str, Any], job_id: str, stage: str, kind: str, *, job_state: str = "done",
         config: dict[str, Any] | None = None, array: Any = None, reason: str = "") -> Path:
    out = run_dir / f"{job_id}-0123456789ab"
    state["jobs"][job_id] = {"id": job_id, "hash": "0123456789ab" * 4, "output_dir": str(out), "state": job_state,
                             "reason": reason, "started": 1.0, "ended": 2.0, "executor_id": None}
    if job_state != "skipped":
        _write(out / "config.json", {"format_version": 1, "recipe": run_dir.name, "recipe_dir": "/r", "id": job_id,
                                     "stage": stage, "kind": kind, "entry": "x:y", "hash": "0" * 48,
                                     "depends_on": [], "array": array, "group": None, "resources": {},
                                     "config": config or {}})
    return out


def make_run(root: Path, name: str, metrics: dict[str, dict[str, float]], *, failed: tuple[str, ...] = (),
             loss: float = 0.9, swarm: list[dict[str, float]] | None = None, order: list[str] | None = None) -> Path:
    """A run folder `root/name` with the training jobs in `order` and an eval job after each one that has metrics
    (or is listed in `failed`)."""
    run_dir = root / name
    state: dict[str, Any] = {"recipe": name, "plan": str(root / "gone" / "plan.json"), "executor": "local",
                             "started": 0.0, "updated": 1.0, "jobs": {}}
    if swarm is not None:
        _job(run_dir, state, "mix-swarm", "data.mix", "regmix_swarm", array={"size": len(swarm) + 1, "parallelism": 1})
        out = _job(run_dir, state, "mix-swarm-eval", "data.mix", "eval", array={"size": len(swarm) + 1, "parallelism": 1},
                   config={"model": {"job": "mix-swarm", "proxies": True}})
        for i, values in enumerate(swarm):  # the last proxy has no metrics.json
            _write(out / f"proxy-{i:05d}" / "metrics.json", {"job": "mix-swarm-eval", "metrics": values})
    for index, job in enumerate(order or STAGES):
        stage = STAGE_OF.get(job, job)
        out = _job(run_dir, state, job, stage, stage.replace("-", "_"))
        _write(out / "DONE.json", {"job": job, "final_loss": loss + index / 10,
                                   "eval": {"arithmetic": {"bpb": 0.5 + index / 100, "bytes": 100, "docs": 3},
                                            "arith_exact_match": {"accuracy": index / 8, "n": 32, "examples": []}}})
        if job in failed:
            _job(run_dir, state, f"eval-{job}", stage, "eval", job_state="failed", reason="exit code 1",
                 config={"model": {"job": job}})
        elif job in metrics:
            out = _job(run_dir, state, f"eval-{job}", stage, "eval", config={"model": {"job": job}})
            doc = {"job": f"eval-{job}", "stage": stage, "model": str(out / "hf"), "backend": "vllm",
                   "lm_eval_version": "0.4.13", "metrics": metrics[job], "stderr": {}, "samples": {}, "seconds": 1.0}
            _write(out / "metrics.json", doc)
            _write(out / "DONE.json", {"job": f"eval-{job}", "metrics": metrics[job]})
    _write(run_dir / "state.json", state)
    return run_dir


def _table(text: str, title: str) -> list[list[str]]:
    """The rows (cells split on 2+ spaces) of the plain-text table under `title`."""
    lines = text.splitlines()
    start = lines.index(title) + 1
    rows = []
    for line in lines[start:]:
        if not line.strip():
            break
        rows.append([c for c in line.strip().split("  ") if c.strip()])
    return [[c.strip() for c in row] for row in rows]


def _print(run: Path, other: Path | None = None, **kwargs: Any) -> str:
    import io

    stream = io.StringIO()
    assert report(str(run), str(other) if other else None, stream=stream, **kwargs) == 0
    return stream.getvalue()


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, Path]:
    """A: every stage evaluated; B: better bpb and exact match from SFT on, DPO's eval failed, an extra stage."""
    b_metrics = {s: dict(v) for s, v in BASE.items() if s != "dpo"}
    b_metrics["sft"].update({"toy/arithmetic/bpb": 0.55, "tasks/toy_arith/exact_match": 0.1875})
    b_metrics["rlvr"] = {"toy/arithmetic/bpb": 0.6, "tasks/toy_arith/exact_match": 0.3}
    a = make_run(tmp_path, "natural", BASE)
    b = make_run(tmp_path, "regmix", b_metrics, failed=("dpo",), order=[*STAGES, "rlvr"], loss=0.8)
    return a, b


def test_one_run_table_in_plan_order(runs: tuple[Path, Path]) -> None:
    a, _ = runs
    text = _print(a)
    rows = _table(text, "toy")
    assert rows[0] == ["metric", "pretrain", "midtrain", "long-context", "sft", "dpo"]  # plan order, not sorted
    assert rows[2] == ["toy/arithmetic/bpb", "0.6309", "0.5876", "—", "0.61", "0.62"]  # long-context: no eval job
    tasks = _table(text, "tasks")
    assert ["tasks/toy_arith/exact_match", "0", "0.03125", "—", "0.2188", "0.25"] in tasks  # 4 significant digits
    house = _table(text, "in-house: the training jobs' own numbers (not lm-eval)")
    assert house[2] == ["in-house/train/final_loss", "0.9", "1", "1.1", "1.2", "1.3"]
    assert ["in-house/arith_exact_match/accuracy", "0", "0.125", "0.25", "0.375", "0.5"] in house
    assert not any(r[0].endswith(("/bytes", "/docs", "/n")) for r in house)  # sizes are not scores


def test_one_run_markdown(runs: tuple[Path, Path]) -> None:
    a, _ = runs
    _print(a)
    md = (a / "report" / "report.md").read_text(encoding="utf-8")
    assert "| metric | pretrain | midtrain | long-context | sft | dpo |" in md
    assert "| toy/arithmetic/bpb | 0.6309 | 0.5876 | — | 0.61 | 0.62 |" in md
    assert "## in-house: the training jobs' own numbers (not lm-eval)" in md
    assert "![toy/text/bpb](charts/toy__text__bpb.png)" in md


def test_imports_stay_light() -> None:
    """The CLI imports runtime.report at every `recipe report`: no torch, and matplotlib only when charts are drawn."""
    import subprocess
    import sys

    code = ("import json, sys; import compiler.cli, runtime.report, runtime.report.text; "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'matplotlib', 'numpy'))))")
    from tests.conftest import REPO, subprocess_env

    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                         check=True).stdout
    assert json.loads(out) == []


def test_two_models_of_one_stage(tmp_path: Path) -> None:
    """RL and its random-reward control are one stage with two models: two columns, each with its own eval job's
    metrics and its own training numbers."""
    metrics = {"sft": BASE["sft"], "rlvr": {"tasks/toy_arith/exact_match": 0.4},
               "rlvr-random-reward": {"tasks/toy_arith/exact_match": 0.25}}
    run = make_run(tmp_path, "rl", metrics, order=["sft", "rlvr", "rlvr-random-reward"])
    text = _print(run, metrics=["tasks/toy_arith/*", "in-house/train/*"])
    assert _table(text, "tasks")[2] == ["tasks/toy_arith/exact_match", "0.2188", "0.4", "0.25"]
    assert _table(text, "tasks")[0] == ["metric", "sft", "rlvr", "rlvr-random-reward"]
    assert _table(text, "in-house: the training jobs' own numbers (not lm-eval)")[2] == [
        "in-house/train/final_loss", "0.9", "1", "1.1"]
    assert [(s.stage, s.plan_stage, s.eval_job) for s in load_run(str(run)).stages] == [
        ("sft", "sft", "eval-sft"), ("rlvr", "rlvr", "eval-rlvr"),
        ("rlvr-random-reward", "rlvr", "eval-rlvr-random-reward")]


def test_stage_order_merges_plan_orders(runs: tuple[Path, Path]) -> None:
    a, b = (load_run(str(p)) for p in runs)
    assert stage_order(a, b) == ["pretrain", "midtrain", "long-context", "sft", "dpo", "rlvr"]
    assert [s.stage for s in b.stages] == ["pretrain", "midtrain", "long-context", "sft", "dpo", "rlvr"]


def test_two_runs_side_by_side(runs: tuple[Path, Path]) -> None:
    a, b = runs
    text = _print(a, b)
    assert text.splitlines()[0].startswith("Evaluation report: B = regmix")
    rows = _table(text, "toy")
    assert rows[0] == ["metric", "stage", "A: natural", "B: regmix", "Δ (B − A)", "B vs A"]
    by_key = {(r[0], r[1]): r[2:] for r in rows[2:]}
    assert by_key[("toy/arithmetic/bpb", "sft")] == ["0.61", "0.55", "-0.06", "better"]  # bpb: lower is better
    assert by_key[("toy/arithmetic/bpb", "pretrain")] == ["0.6309", "0.6309", "±0", "same"]
    assert by_key[("toy/arithmetic/bpb", "dpo")] == ["0.62", "failed", "—"]  # B's eval failed: no value, no delta
    assert by_key[("toy/arithmetic/bpb", "rlvr")] == ["—", "0.6", "—"]  # a stage only B has
    assert ("toy/arithmetic/bpb", "long-context") not in by_key  # neither run has a value
    tasks = {(r[0], r[1]): r[2:] for r in _table(text, "tasks")[2:]}
    assert tasks[("tasks/toy_arith/exact_match", "sft")] == ["0.2188", "0.1875", "-0.03125", "worse"]
    house = {(r[0], r[1]): r[2:] for r in _table(text, "in-house: the training jobs' own numbers (not lm-eval)")[2:]}
    assert house[("in-house/train/final_loss", "sft")] == ["1.2", "1.1", "-0.1", "better"]
    assert "regmix: eval-dpo failed: exit code 1" in text.splitlines()


def test_directions() -> None:
    assert direction("toy/arithmetic/bpb") == -1 and direction("tasks/wikitext/word_perplexity") == -1
    assert direction("tasks/gsm8k/exact_match_strict-match") == 1 and direction("tasks/mmlu/acc_norm") == 1
    assert direction("tasks/x/some_score") == 0
    assert delta(0.5, 0.6, "tasks/x/some_score") == ("+0.1", "")  # unknown direction: no verdict
    assert delta(0.5, 0.6, "tasks/x/acc") == ("+0.1", "better")
    assert delta(0.5, 0.6, "toy/x/bpb") == ("+0.1", "worse")


def test_markdown_and_charts(runs: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = runs
    out = tmp_path / "cmp"
    _print(a, b, out=out)
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "| toy/arithmetic/bpb | sft | 0.61 | 0.55 | -0.06 | better |" in md
    assert "| metric | stage | A: natural | B: regmix | Δ (B − A) | B vs A |" in md
    assert "- regmix: eval-dpo failed: exit code 1" in md
    links = [line[line.index("(") + 1:-1] for line in md.splitlines() if line.startswith("![")]
    assert "charts/toy__arithmetic__bpb.png" in links and "charts/tasks__toy_arith__exact_match.png" in links
    assert not any("in-house" in link for link in links)  # the in-house numbers stay in their table
    for link in links:
        data = (out / link).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 2000
    assert sorted(p.name for p in (out / "charts").iterdir()) == sorted(Path(link).name for link in links)
    assert not [p for p in out.rglob(".*.tmp")]  # no temporary files left behind


def test_default_out_and_metric_filter(runs: tuple[Path, Path]) -> None:
    a, b = runs
    text = _print(a, metrics=["tasks/*/exact_match"])
    assert "toy/arithmetic/bpb" not in text and "in-house" not in text
    assert text.rstrip().endswith(f"markdown: {a / 'report' / 'report.md'} (2 charts)")
    _print(a, b)
    assert (a / "report-vs-regmix" / "report.md").is_file() and (a / "report" / "report.md").is_file()
    with pytest.raises(ReportError, match=r"no metric matches nothing/\*"):
        _print(a, metrics=["nothing/*"])


def test_swarm_summary(tmp_path: Path) -> None:
    proxies = [{"toy/text/bpb": v, "tasks/macro/exact_match": v / 10} for v in (0.9, 0.7, 0.8)]
    run = make_run(tmp_path, "mix", {"pretrain": BASE["pretrain"]}, swarm=proxies, order=["pretrain"])
    text = _print(run)
    rows = _table(text, "mix-swarm-eval: 3 of 4 proxies with metrics (done)")
    assert ["toy/text/bpb", "3", "0.7", "0.8", "0.9"] in rows
    assert "mix: mix-swarm-eval done; no metrics for proxies 3" in text


def test_errors_are_one_line(runs: tuple[Path, Path], tmp_path: Path, run_cli: Any) -> None:
    a, _ = runs
    result = run_cli("report", "no-such-run", "--runs", tmp_path)
    assert result.code == 2 and len(result.err_lines) == 1 and "no-such-run: no run here" in result.err
    (a / "eval-sft-0123456789ab" / "metrics.json").write_text('{"metrics": {"toy/a/bpb": 0.5,', encoding="utf-8")
    result = run_cli("report", a)
    assert result.code == 2 and len(result.err_lines) == 1
    assert result.err.startswith(f"recipe: {a / 'eval-sft-0123456789ab' / 'metrics.json'}:1:") and "not valid JSON" in result.err
    assert not (a / "report").exists()  # nothing written
    (tmp_path / "a-file").write_text("", encoding="utf-8")
    result = run_cli("report", runs[1], "--out", tmp_path / "a-file")
    assert result.code == 2 and len(result.err_lines) == 1 and "cannot write the report to" in result.err
    bare = make_run(tmp_path, "bare", {})
    result = run_cli("report", "bare", "--runs", tmp_path)
    assert result.code == 2 and result.err_lines == [f"recipe: {bare}: no eval jobs in this run (its plan has none: "
                                                     f"add evals to the recipe, compile and launch it again)"]
    pending = make_run(tmp_path, "pending", {}, failed=("sft",), order=["sft"])
    result = run_cli("report", pending)
    assert result.code == 2 and result.err_lines == [f"recipe: {pending}: no eval job has metrics yet (eval-sft failed)"]


def test_through_the_cli(runs: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = runs
    result = run_subprocess(["report", "natural", "regmix", "--runs", tmp_path, "--out", tmp_path / "out",
                             "--metric", "toy/*"])
    assert result.code == 0, result.err
    assert "toy/arithmetic/bpb  sft" in result.out and "better" in result.out
    assert (tmp_path / "out" / "charts" / "toy__text__bpb.png").read_bytes().startswith(PNG_MAGIC)


def test_headline_metrics_from_the_plan_come_first(tmp_path: Path) -> None:
    run = make_run(tmp_path, "a", BASE, failed=("dpo",))
    plan = tmp_path / "build" / "plan.json"
    _write(plan, {"jobs": [], "evals": {"report": ["tasks/toy_arith/exact_match", "toy/text/bpb", "tasks/unknown/x"]}})
    state = json.loads((run / "state.json").read_text())
    state["plan"] = str(plan)
    _write(run / "state.json", state)
    text = _print(run)
    title = "headline metrics (the recipe's evals.report)"
    assert text.splitlines().index(title) < text.splitlines().index("toy")  # before the suites' tables
    rows = _table(text, title)
    assert [r[0] for r in rows[2:]] == ["tasks/toy_arith/exact_match", "toy/text/bpb"]  # no values: not shown
    assert rows[2][1:5] == ["0", "0.03125", "—", "0.2188"] and rows[2][-1] == "failed"  # long-context: no eval job
    other = make_run(tmp_path, "b", {k: {**v, "toy/text/bpb": v["toy/text/bpb"] - 0.01} for k, v in BASE.items()})
    compared = _table(_print(run, other), title)
    assert ["toy/text/bpb", "pretrain", "0.3471", "0.3371", "-0.01", "better"] in compared


def test_the_mix_objective_scores_both_runs_the_same_way(tmp_path: Path) -> None:
    """A run on the searched mix (its plan has the objective) against one on the natural mix (its plan has none):
    both scored with the searched run's objective, lower is better."""
    objective = [{"metric": "toy/text/bpb", "weight": 0.5, "direction": "minimize"},
                 {"metric": "tasks/toy_mc/acc", "weight": 0.5, "direction": "maximize"}]
    searched = make_run(tmp_path, "regmix", BASE)
    natural = make_run(tmp_path, "natural", {k: {**v, "toy/text/bpb": v["toy/text/bpb"] + 0.1} for k, v in BASE.items()})
    plan = tmp_path / "build" / "plan.json"
    _write(plan, {"jobs": [{"id": "mix-swarm", "kind": "regmix_swarm", "config": {"objective": objective}}],
                  "evals": {"report": ["toy/text/bpb"]}})
    state = json.loads((searched / "state.json").read_text())
    state["plan"] = str(plan)
    _write(searched / "state.json", state)
    title = "headline metrics (the recipe's evals.report)"
    one = _table(_print(searched), title)
    assert one[2][0] == "mix/objective" and one[2][1] == f"{0.5 * 0.3471 - 0.5 * 0.25:.4g}"
    rows = _table(_print(natural, searched), title)  # A = natural, B = the searched mix
    pretrain = next(r for r in rows if r[:2] == ["mix/objective", "pretrain"])
    assert pretrain[4] == f"{-0.05:+.4g}" and pretrain[5] == "better"


def test_data_generation_and_decontamination_sections(tmp_path: Path) -> None:
    run = make_run(tmp_path, "gen", {"sft": BASE["sft"]}, order=["sft"])
    state = json.loads((run / "state.json").read_text())
    out = _job(run, state, "decontaminate", "", "decontaminate")
    _write(out / "report.json", {"policy": "drop", "ngram": 13, "totals": {"contaminated": 25}, "datasets": {
        "source-arithmetic": {"rows": 34025, "contaminated": 25, "by_eval_set": {"toy_arith": {"rows": 25, "items": 25}}},
        "source-text": {"rows": 26000, "contaminated": 0, "by_eval_set": {}}}})
    out = _job(run, state, "sft-distill", "sft", "distill")
    _write(out / "DONE.json", {"counts": {"generated": 4000, "wrong_answer": 2500, "exact_duplicates": 700, "kept": 800},
                               "generation": {"seconds": 61.2}})
    out = _job(run, state, "dpo-delta-pairs", "dpo", "delta_pairs")
    _write(out / "DONE.json", {"gap": {"chosen_accuracy": 0.42, "rejected_accuracy": 0.1, "gap": 0.32},
                               "counts": {"prompts": 1000, "kept": 400},
                               "generation": {"chosen": {"seconds": 20.0}, "rejected": {"seconds": 19.0}}})
    _job(run, state, "later-distill", "x", "distill", job_state="running")  # not done: left out
    _write(run / "state.json", state)
    text = _print(run)
    title = "decontaminate: 13-gram overlap with the eval sets (policy drop: contaminated rows are dropped before training)"
    assert _table(text, title) == [["dataset", "rows", "contaminated", "hits in toy_arith"], ["-" * 17, "-" * 6, "-" * 12, "-" * 18],
                                   ["source-arithmetic", "34,025", "25", "25 rows / 25 items"],
                                   ["source-text", "26,000", "0", "0"]]
    assert ["wrong answer", "2,500"] in _table(text, "sft-distill: distilled SFT samples; generation 61 s")
    delta = _table(text, "dpo-delta-pairs: delta pairs (chosen vs rejected); generation 39 s")
    assert ["gap", "0.320"] in delta and ["kept", "400"] in delta
    assert "later-distill" not in text
