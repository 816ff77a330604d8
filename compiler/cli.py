"""`recipe`: compile, explain, diff and schema for training recipes.

    recipe compile R.yaml [-o build] [--set path=value ...]
    recipe explain R.yaml [--json] [--set ...]
    recipe diff A B [--format text|markdown|json] [--set ...] [--set-old ...] [--set-new ...]   (A, B: files or REV:path)
    recipe git-diff PATH OLD_FILE OLD_HEX OLD_MODE NEW_FILE NEW_HEX NEW_MODE   (git external diff driver)
    recipe schema
    recipe launch R.yaml|build/<name>/plan.json [--executor local|slurm] [--dry-run] [--force] [--runs DIR]
                  [--only JOB ...] [--skip-unimplemented] [--allow-dirty]
    recipe status RUN [--watch [SECONDS]]
    recipe logs RUN JOB [--task N] [-f]
    recipe cancel RUN [JOB ...]
    recipe report RUN [OTHER_RUN] [--runs DIR] [--out DIR] [--metric GLOB ...]
    recipe mix fit --ratios R.csv --metrics M.csv --objective NAME[:min|max][=WEIGHT] ... [--predict C.csv] [--solve] [--json]

User mistakes print one `file:line:col: path: message` line each and exit 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from compiler.diagnostics import RecipeError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _add_sets(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="PATH=VALUE",
                        help="override a field, typed by the schema (stages.<name>.lr=2e-5; null clears)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recipe", description="Declarative spec compiler for LLM training recipes.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("compile", help="validate a recipe and write its plan and launch files")
    p.add_argument("recipe")
    p.add_argument("-o", "--output", default="build", help="output folder (default: build); writes OUTPUT/<name>/")
    _add_sets(p)
    p = sub.add_parser("explain", help="print the derived numbers: parameters, memory, GPU-hours")
    p.add_argument("recipe")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _add_sets(p)
    p = sub.add_parser("diff", help="what changes between two recipes, job by job (A, B: files or REV:path)")
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--format", choices=["text", "markdown", "json"], default="text")
    _add_sets(p)
    p.add_argument("--set-old", dest="old_sets", action="append", default=[], metavar="PATH=VALUE",
                   help="override a field on the old side only (after --set)")
    p.add_argument("--set-new", dest="new_sets", action="append", default=[], metavar="PATH=VALUE",
                   help="override a field on the new side only (after --set): what-if diffs of one recipe")
    p = sub.add_parser("git-diff", help="`recipe diff` as a git external diff driver (diff.recipe.command)")
    p.add_argument("path", help="the file's path in the repository")
    p.add_argument("old_file", nargs="?", help="the old version (/dev/null when added)")
    p.add_argument("old_hex", nargs="?")
    p.add_argument("old_mode", nargs="?")
    p.add_argument("new_file", nargs="?", help="the new version (/dev/null when removed)")
    p.add_argument("new_hex", nargs="?")
    p.add_argument("new_mode", nargs="?")
    p.add_argument("rename", nargs="*", help="for renames: the new path and git's similarity message")
    sub.add_parser("schema", help="print the recipe JSON Schema")
    p = sub.add_parser(
        "launch", help="run a recipe's (or a plan.json's) jobs in dependency order, with caching",
        description="Compile R.yaml into BUILD/<name>/ (a plan.json runs as is, never re-resolved) and run its jobs "
                    "into RUNS/<name>/<id>-<hash12>/. A job whose folder holds DONE.json is cached. Only jobs that will "
                    "run need their entry: a missing one fails the launch before anything starts (exit 2).")
    p.add_argument("target", metavar="R.yaml|plan.json")
    p.add_argument("--executor", choices=["local", "slurm"], default=None,
                   help="where jobs run (default: slurm when the recipe's cluster is a Slurm cluster, else local)")
    p.add_argument("--dry-run", action="store_true", help="print what would run, what is cached and why; start nothing")
    p.add_argument("--force", action="store_true", help="rerun jobs even when DONE.json is present (with --only: the named jobs)")
    p.add_argument("--runs", default="runs", help="run folder (default: runs); writes RUNS/<name>/")
    p.add_argument("--only", nargs="+", metavar="JOB", help="run these jobs and their ancestors that are not cached")
    p.add_argument("--skip-unimplemented", action="store_true",
                   help="skip jobs the runtime cannot run yet (and what depends on them) instead of refusing; the report lists them")
    p.add_argument("--allow-dirty", action="store_true",
                   help="run even when the code has uncommitted changes (job.json records the diff's sha256)")
    p.add_argument("--build", default="build", help="where a recipe is compiled to (default: build)")
    _add_sets(p)
    p = sub.add_parser("status", help="where a launched run stands: a table of its jobs (Slurm states from sacct)")
    p.add_argument("run", help="runs/<name> or a recipe name")
    p.add_argument("--runs", default="runs", help="run folder (default: runs)")
    p.add_argument("--watch", nargs="?", type=float, const=5.0, default=None, metavar="SECONDS",
                   help="refresh every SECONDS (default 5) until every job has ended")
    p = sub.add_parser("logs", help="print (or follow) a job's logs")
    p.add_argument("run", help="runs/<name> or a recipe name")
    p.add_argument("job")
    p.add_argument("--runs", default="runs", help="run folder (default: runs)")
    p.add_argument("--task", type=int, default=None, help="one task of an array job")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing what the job writes until it ends")
    p = sub.add_parser("cancel", help="cancel a run's unfinished jobs (or the named ones)")
    p.add_argument("run", help="runs/<name> or a recipe name")
    p.add_argument("jobs", nargs="*", metavar="JOB")
    p.add_argument("--runs", default="runs", help="run folder (default: runs)")
    p = sub.add_parser("report", help="a run's eval metrics per stage, or two runs side by side (Δ = B − A); "
                                      "writes Markdown with charts")
    p.add_argument("run", help="runs/<name> or a recipe name (A when comparing)")
    p.add_argument("other", nargs="?", metavar="OTHER_RUN", help="a second run to compare against RUN (B)")
    p.add_argument("--runs", default="runs", help="run folder (default: runs)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="where report.md and charts/ go (default: RUN/report, or RUN/report-vs-<OTHER_RUN>)")
    p.add_argument("--metric", dest="metrics", action="append", default=None, metavar="GLOB",
                   help="only metrics whose name matches GLOB (repeatable), e.g. 'tasks/*/exact_match' or 'in-house/*'")
    p = sub.add_parser("mix", help="data-mix tools for swarms trained elsewhere")
    mix = p.add_subparsers(dest="mix_command", required=True)
    _add_mix_fit(mix.add_parser(
        "fit", help="fit a swarm from CSV files (LightGBM + linear, K-fold CV); predict, solve",
        description="Fit mixture ratios (R.csv: run id, one column per source) to metrics (M.csv: run id, one "
                    "column per metric), joined on the run id. Objective = weighted metrics, maximised ones "
                    "negated: lower is better. Bad input: one FILE:LINE: message line each, exit 2."))
    return parser


def _add_mix_fit(parser: argparse.ArgumentParser) -> None:
    """`recipe mix fit`'s options: argparse only, so building the parser imports nothing heavy."""
    parser.add_argument("--ratios", required=True, metavar="R.csv", help="run id, then one ratio column per source")
    parser.add_argument("--metrics", required=True, metavar="M.csv", help="run id, then one column per metric")
    parser.add_argument("--objective", required=True, action="append", metavar="NAME[:min|max][=WEIGHT]",
                        help="a metric of the objective (repeatable); min and weight 1 unless given")
    parser.add_argument("--predict", metavar="CANDIDATES.csv",
                        help="print run id and predicted objective per row as CSV (same columns as R.csv)")
    parser.add_argument("--solve", action="store_true", help="solve for the best mix (top-k average of candidates)")
    parser.add_argument("--json", action="store_true", help="machine-readable report")
    parser.add_argument("--out", metavar="DIR", help="write fit.json, models/, plots/ (and mix.json) here")
    parser.add_argument("--folds", type=int, default=5, help="K of the K-fold CV (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the folds, LightGBM and the solve (default 0)")
    parser.add_argument("--learning-rate", type=float, default=0.01, help="LightGBM learning rate (default 0.01)")
    parser.add_argument("--rounds", type=int, default=1000, help="most boosting rounds (default 1000)")
    parser.add_argument("--leaves", type=int, default=31, help="leaves per tree (default 31)")
    parser.add_argument("--early-stopping", type=int, default=50, help="early-stopping rounds in CV (default 50)")
    parser.add_argument("--candidates", type=int, default=100_000, help="candidates the solve scores (default 100000)")
    parser.add_argument("--top-k", type=int, default=128, help="best candidates averaged (default 128)")


def _compile_to(recipe: str, sets: list[str], output: str) -> tuple[dict[str, Any], Path]:
    """Compile `recipe` and write OUTPUT/<name>/ (plan.json, jobs/); return the plan and that folder."""
    from compiler.build import compile_recipe
    from compiler.render import job_files, write_atomically

    compiled = compile_recipe(recipe, sets)
    target = Path(output) / compiled.recipe.name
    plan = dict(compiled.plan)
    plan["recipe_dir"] = os.path.relpath(compiled.path.resolve().parent, target.resolve())
    try:
        write_atomically(target, job_files(plan))
    except OSError as exc:  # -o names a file, or a folder that cannot be written
        from compiler.diagnostics import Diagnostic, Loc

        raise RecipeError([Diagnostic(Loc(f"<-o {output}>", 1, 1), "", f"cannot write {target}: {exc.strerror or exc}")]) from None
    return plan, target


def cmd_compile(args: argparse.Namespace) -> int:
    from compiler.summary import compile_summary

    plan, target = _compile_to(args.recipe, args.sets, args.output)
    print(compile_summary(plan, target))
    return 0


def cmd_launch(args: argparse.Namespace) -> int:
    """Compile (a recipe) or take (a plan.json), then run it; the runtime is imported here, never at module import."""
    if args.target.endswith(".json"):
        if args.sets:
            print("recipe launch: --set applies to recipes, not to a compiled plan.json", file=sys.stderr)
            return EXIT_USER_ERROR
        plan_path = Path(args.target)
    else:
        from compiler.summary import compile_summary

        plan, target = _compile_to(args.target, args.sets, args.build)
        print(compile_summary(plan, target))
        plan_path = target / "plan.json"
    from runtime.launch import LaunchError, launch
    from runtime.launch.interrupt import Interrupted, cause, stop_on_signals

    try:
        with stop_on_signals():
            return launch(plan_path, executor=args.executor, runs=args.runs, force=args.force, only=args.only,
                          dry_run=args.dry_run, skip_unimplemented=args.skip_unimplemented,
                          allow_dirty=args.allow_dirty)
    except LaunchError as exc:
        for line in exc.lines:
            print(line, file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as exc:
        print(f"recipe launch: interrupted by {cause(exc)} (state.json and report.json say where each job stands)",
              file=sys.stderr)
        return exc.exit_code if isinstance(exc, Interrupted) else EXIT_INTERRUPTED


def cmd_explain(args: argparse.Namespace) -> int:
    from compiler.build import compile_recipe
    from compiler.explain import explain_data, explain_text

    data = explain_data(compile_recipe(args.recipe, args.sets))
    print(json.dumps(data, indent=2, sort_keys=True) if args.json else explain_text(data))
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from compiler.diff import run_diff

    print(run_diff(args.old, args.new, args.format, args.sets, old_sets=args.old_sets, new_sets=args.new_sets))
    return 0


def cmd_git_diff(args: argparse.Namespace) -> int:
    from compiler.diff import run_git_diff

    if args.new_file is None:  # git passes only PATH for an unmerged path
        print(f"recipe diff: unmerged path {args.path}")
        return 0
    print(run_git_diff(args.path, args.old_file, args.new_file, new_path=args.rename[0] if args.rename else None))
    return 0


def _run_command(function: Callable[..., int], *args: Any, **kwargs: Any) -> int:
    from runtime.launch.status import StatusError

    try:
        return function(*args, **kwargs)
    except StatusError as exc:
        print(f"recipe: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR


def cmd_status(args: argparse.Namespace) -> int:
    from runtime.launch.status import status

    return _run_command(status, args.run, runs=args.runs, watch=args.watch)


def cmd_logs(args: argparse.Namespace) -> int:
    from runtime.launch.status import logs

    return _run_command(logs, args.run, args.job, runs=args.runs, task=args.task, follow=args.follow)


def cmd_cancel(args: argparse.Namespace) -> int:
    from runtime.launch.status import cancel

    return _run_command(cancel, args.run, args.jobs or None, runs=args.runs)


def cmd_report(args: argparse.Namespace) -> int:
    from runtime.report import report

    return _run_command(report, args.run, args.other, runs=args.runs, out=args.out, metrics=args.metrics)


def cmd_mix(args: argparse.Namespace) -> int:
    try:
        import lightgbm  # noqa: F401  numpy and LightGBM: only for this command
        import numpy  # noqa: F401
    except ModuleNotFoundError as exc:
        print(f"recipe mix fit: needs {exc.name} (the runtime extra: pip install -e '.[runtime]')", file=sys.stderr)
        return EXIT_USER_ERROR
    from runtime.regmix.cli import run

    return run(args)


def cmd_schema(args: argparse.Namespace) -> int:
    from compiler.schema import recipe_schema

    print(json.dumps(recipe_schema(), indent=2))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "compile": cmd_compile,
    "explain": cmd_explain,
    "diff": cmd_diff,
    "git-diff": cmd_git_diff,
    "schema": cmd_schema,
    "launch": cmd_launch,
    "status": cmd_status,
    "logs": cmd_logs,
    "cancel": cmd_cancel,
    "report": cmd_report,
    "mix": cmd_mix,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except RecipeError as exc:
        for diagnostic in exc.diagnostics:
            print(diagnostic, file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:  # status --watch, logs -f, a compile of a huge recipe
        print(f"recipe {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
        if os.environ.get("RECIPE_DEBUG"):
            raise
        print(f"recipe: internal error: {exc.__class__.__name__}: {exc} (rerun with RECIPE_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
