"""`nestdsl reproduce`: run a suite of the paper's claims and regenerate the report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nestdsl.cli.app import TracebackOpt, app, out
from nestdsl.cli.errors import UserError, guard

ROOT = Path(__file__).resolve().parents[2]


@app.command()
def reproduce(
    suites: Annotated[list[str] | None, typer.Argument(
        help="suite names (examples/reproduce/<name>.yaml) or suite files; none: list them")] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="runs at a time (one thread each)")] = 2,
    scale: Annotated[float, typer.Option("--scale", help="multiply every run's step budget (e.g. 10 on a GPU)")] = 1.0,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda")] = "cpu",
    rows: Annotated[list[str] | None, typer.Option("--row", help="only these rows (repeatable)")] = None,
    seeds: Annotated[list[int] | None, typer.Option("--seed", help="only these seeds (repeatable)")] = None,
    results: Annotated[Path, typer.Option("--results", help="where run records go")] =
        ROOT / "benchmarks" / "results" / "reproduce",
    report: Annotated[Path, typer.Option("--report", help="the markdown report to regenerate")] =
        ROOT / "docs" / "reproduction.md",
    report_only: Annotated[bool, typer.Option("--report-only", help="regenerate the report from the stored records; run nothing")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the runs a suite would make")] = False,
    traceback: TracebackOpt = False,
) -> None:
    """Run reproduction suites (each run in its own process; finished runs are not re-run) and
    regenerate the report: nestdsl's figures beside the paper's, a verdict per claim."""
    with guard(traceback):
        from nestdsl.reproduce.report import report_names, write_report
        from nestdsl.reproduce.runner import plan, run_suite
        from nestdsl.reproduce.suite import load_suite, suite_names

        if not suites and not report_only:
            for name in suite_names():
                s = load_suite(name)
                out.print(f"{name:<10} {s.title}: {len(plan(s))} runs of {s.steps} steps")
            return
        if jobs < 1:
            raise UserError(f"--jobs must be >= 1, got {jobs}")
        loaded = [load_suite(s) for s in suites or []]
        for s in loaded:
            if dry_run:
                for job in plan(s, scale=scale, device=device, rows=rows, seeds=seeds):
                    out.print(f"{job.id}: {job.steps} steps, {Path(job.spec).name} "
                              + " ".join(f"--set {o}" for o in job.overrides), highlight=False)
                continue
            run_suite(s, results, jobs=jobs, scale=scale, device=device, rows=rows, seeds=seeds,
                      say=lambda m: out.print(m, highlight=False))
        if not dry_run:
            names = report_names(results, [*suite_names(), *(s.suite for s in loaded)])
            out.print(f"wrote {write_report(results, names, report)}")
