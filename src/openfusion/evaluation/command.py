"""`openfusion eval`: arguments, the pre-run estimate and confirmation, the run, and the report."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
from pathlib import Path
from typing import TextIO

from openfusion.evaluation.calls import describe, fetch_panels, make_client
from openfusion.evaluation.chart import draw_chart
from openfusion.evaluation.dataset import Task, load_tasks, select_tasks
from openfusion.evaluation.errors import EvalError, MissingDependency
from openfusion.evaluation.estimate import Estimate, Prices, estimate
from openfusion.evaluation.leaks import DEFAULT_LEAKY_HOSTS, fusion_plugins
from openfusion.evaluation.progress import progress_bar
from openfusion.evaluation.records import ResultStore
from openfusion.evaluation.report import CHART_NAME, RunInfo, format_cost, write_report
from openfusion.evaluation.runner import RunSettings, run_evaluation
from openfusion.evaluation.summary import lifts, summarize

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
DEFAULT_KEY_ENV = "OPENFUSION_API_KEY"
# A grade is a verdict and a sentence or two: a bound that still leaves a reasoning grader room to think,
# so a grader that rambles fails that one grade instead of running up its bill.
DEFAULT_GRADER_MAX_TOKENS = 2048


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """The `eval` subcommand's options."""
    arg = parser.add_argument
    arg("--base-url", default=DEFAULT_BASE_URL, help=f"the running openfusion (default {DEFAULT_BASE_URL})")
    arg("--models", required=True, type=_csv, help="comma-separated models, e.g. fusion/budget,deepseek/deepseek-v3.2")
    arg("--data", required=True, help="DRACO-format JSONL file, or hf:perplexity-ai/draco")
    arg("--grader", required=True, help="the grader model (one call per criterion)")
    arg("--grader-temperature", type=float, default=0.0, help="grader temperature (default 0)")
    arg("--grader-max-tokens", type=_positive, default=DEFAULT_GRADER_MAX_TOKENS,
        help=f"max_tokens of each grader call (default {DEFAULT_GRADER_MAX_TOKENS})")  # fmt: skip
    arg("--max-tokens", type=_positive, default=None, help="max_tokens of each answer")
    arg("--repeats", type=_positive, default=1, help="grading runs per answer, averaged (DRACO's paper: 5)")
    arg("--limit", type=_positive, default=None, help="sample this many tasks")
    arg("--domain", action="append", type=_csv, default=[], help="only these domains (repeatable, comma-separated)")
    arg("--seed", type=int, default=0, help="seed of the task sample (default 0)")
    arg("--concurrency", type=_positive, default=4, help="answers in flight at once (default 4)")
    arg("--grader-concurrency", type=_positive, default=16, help="grader calls in flight at once (default 16)")
    arg("--out", type=Path, default=Path("eval-out"), help="results, report and chart directory (default eval-out)")
    arg("--api-key-env", default=DEFAULT_KEY_ENV, help=f"variable holding the client key (default {DEFAULT_KEY_ENV})")
    arg("--price-per-call", action="append", default=[], metavar="[MODEL=]USD", help="for the estimate; repeatable")
    arg("--timeout", type=float, default=1800.0, help="seconds to wait for one answer (default 1800)")
    arg("--max-retries", type=int, default=2, help="SDK retries of a failed call (default 2)")
    arg("--allow-leaky-hosts", action="store_true", help="let fusion's web research reach the benchmark's hosts")
    arg("--exclude-host", action="append", default=[], help="one more host kept out of web research (repeatable)")
    arg("--retry-failures", action="store_true", help="redo the failed answers and grader calls of earlier runs")
    arg("--yes", "-y", action="store_true", help="run without asking for confirmation")
    arg("--dry-run", action="store_true", help="print the estimate and stop")


def run_eval(args: argparse.Namespace, *, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """Run `openfusion eval`; returns the exit status."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    try:
        return _run(args, stdin, stdout)
    except EvalError as exc:
        _say(f"openfusion eval: {exc}", sys.stderr)
        return 2


def _run(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> int:
    models = list(dict.fromkeys(args.models))
    if not models:
        raise EvalError("--models names no model")
    prices = Prices.parse(args.price_per_call)
    if not args.dry_run:
        _check_dependencies()
    available = load_tasks(args.data)
    domains = [d for group in args.domain for d in group]
    tasks = select_tasks(available, limit=args.limit, domains=domains, seed=args.seed)
    store = ResultStore(args.out / "results.jsonl")
    plan = estimate(
        tasks=tasks,
        models=models,
        grader=args.grader,
        repeats=args.repeats,
        store=store,
        prices=prices,
        retry_failures=args.retry_failures,
    )
    _say(render_estimate(plan, tasks=len(tasks), available=len(available), repeats=args.repeats), stdout)
    if args.dry_run:
        return 0
    if plan.calls and not args.yes and not _confirmed(stdin, stdout):
        return 2 if not stdin.isatty() else 1
    blocked = [] if args.allow_leaky_hosts else [*DEFAULT_LEAKY_HOSTS, *args.exclude_host]
    settings = _run_settings(args, models=models, blocked=blocked)
    info = _run_info(args, tasks=tasks, available=len(available), blocked=blocked)
    try:
        info = asyncio.run(_execute(args, settings=settings, store=store, info=info, calls=plan.calls))
    except KeyboardInterrupt:
        _say(f"\ninterrupted; finished calls are kept in {store.path}: run the same command to resume", sys.stderr)
        return 130
    finally:
        store.close()
    return _write_outputs(args.out, store=store, info=info, settings=settings, stdout=stdout)


def _run_settings(args: argparse.Namespace, *, models: list[str], blocked: list[str]) -> RunSettings:
    return RunSettings(
        models=models,
        grader=args.grader,
        grader_temperature=args.grader_temperature,
        grader_max_tokens=args.grader_max_tokens,
        max_tokens=args.max_tokens,
        repeats=args.repeats,
        concurrency=args.concurrency,
        grader_concurrency=args.grader_concurrency,
        fusion_plugins=fusion_plugins(blocked) if blocked else None,
        retry_failures=args.retry_failures,
    )


def _run_info(args: argparse.Namespace, *, tasks: list[Task], available: int, blocked: list[str]) -> RunInfo:
    return RunInfo(
        data=args.data,
        tasks=tasks,
        available=available,
        seed=args.seed,
        base_url=args.base_url,
        grader=args.grader,
        grader_temperature=args.grader_temperature,
        repeats=args.repeats,
        blocked_hosts=blocked,
    )


async def _execute(
    args: argparse.Namespace, *, settings: RunSettings, store: ResultStore, info: RunInfo, calls: int
) -> RunInfo:
    import openai  # present: _check_dependencies ran

    api_key = os.environ.get(args.api_key_env) or "unused"  # openfusion itself needs no client key
    client = make_client(base_url=args.base_url, api_key=api_key, timeout=args.timeout, max_retries=args.max_retries)
    async with client:
        try:
            info = dataclasses.replace(info, panels=await fetch_panels(client))
        except openai.APIConnectionError as exc:
            raise EvalError(f"cannot reach openfusion at {args.base_url}: {describe(exc)}") from None
        except openai.APIError as exc:  # no model list: the run goes on, the report says why there is no lift
            info = dataclasses.replace(info, panels_error=describe(exc))
        with progress_bar(calls) as bar:
            await run_evaluation(client, tasks=info.tasks, settings=settings, store=store, progress=bar)
    return info


def _write_outputs(out: Path, *, store: ResultStore, info: RunInfo, settings: RunSettings, stdout: TextIO) -> int:
    summaries = summarize(
        store, tasks=info.tasks, models=settings.models, grader=settings.grader, repeats=settings.repeats
    )
    found = lifts(summaries, info.panels)
    report = write_report(out, info, summaries, found)
    chart = draw_chart(out / CHART_NAME, summaries, found)
    width = max(len(s.model) for s in summaries)
    _say("", stdout)
    for s in summaries:
        _say(
            f"{s.model:<{width}}  score {s.score * 100:5.1f}%  pass {s.pass_rate * 100:5.1f}%  "
            f"cost {format_cost(s)}  grader failures {s.grader_failures}",
            stdout,
        )
    for lift in found:
        if lift.points is not None:
            _say(f"{lift.model}: {lift.points:+.1f} points over {lift.best}", stdout)
    _say(f"report: {report}\nchart:  {chart}\nresults: {store.path}", stdout)
    return 0


def render_estimate(plan: Estimate, *, tasks: int, available: int, repeats: int) -> str:
    """The plan printed before running: calls still to make per model, and the estimated cost."""
    width = max(12, *(len(m.model) for m in plan.models))
    lines = [
        f"openfusion eval: {tasks} task(s) of {available} x {len(plan.models)} model(s), grader {plan.grader}, "
        f"{repeats} repeat(s)",
        f"  {'model':<{width}}  {'answers to do':>13}  {'grader calls to do':>18}  {'answers done':>12}  "
        f"{'grades done':>11}",
    ]
    for m in plan.models:
        counts = f"{m.answers_todo:>13}  {m.grades_todo:>18}  {m.answers_done:>12}  {m.grades_done:>11}"
        lines.append(f"  {m.model:<{width}}  {counts}")
    lines.append(
        f"  total: {plan.answer_calls} answer calls + {plan.grader_calls} grader calls = {plan.calls} calls "
        "(each fusion answer also makes one upstream call per panel member, plus judge and synthesizer)"
    )
    cost, unpriced = plan.cost()
    if not plan.calls:
        lines.append("  nothing left to call: the report is rebuilt from the results file")
    elif unpriced:
        known = f"${cost:.4f} for the priced models, " if cost else ""
        lines.append(f"  estimated cost: {known}unknown for {', '.join(unpriced)} (give --price-per-call MODEL=USD)")
    else:
        lines.append(f"  estimated cost: ${cost:.4f}")
    return "\n".join(lines)


def _confirmed(stdin: TextIO, stdout: TextIO) -> bool:
    if not stdin.isatty():
        # Never block on a pipe or in CI: the caller must say --yes (or only look, with --dry-run).
        _say(
            "openfusion eval: stdin is not a terminal; pass --yes to run, or --dry-run to see the estimate only",
            sys.stderr,
        )
        return False
    stdout.write("Run these calls? [y/N] ")
    stdout.flush()
    answer = stdin.readline().strip().lower()
    if answer not in {"y", "yes"}:
        _say("not run", stdout)
        return False
    return True


def _check_dependencies() -> None:
    # Fail before spending anything, not after the last call when the chart is drawn.
    for module, package, purpose in (
        ("openai", "openai", "calling the models"),
        ("rich", "rich", "the progress bar"),
        ("matplotlib", "matplotlib", "the score-vs-cost chart"),
    ):
        try:
            __import__(module)
        except ImportError:
            raise MissingDependency(package, purpose) from None


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _say(text: str, stream: TextIO) -> None:
    print(text, file=stream)
