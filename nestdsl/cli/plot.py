"""`nestdsl plot`: loss curves (and inner-loop memory statistics) of runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nestdsl.cli.app import TracebackOpt, app, out
from nestdsl.cli.errors import UserError, guard


@app.command()
def plot(
    run_dirs: Annotated[list[Path], typer.Argument(help="run folders to compare")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help=(
        "PNG of the loss curves (default: RUN/loss.png for one run; FIRST_RUN/loss-compare.png "
        "for several); the memories' plot is written beside it as <name>-memories.png"))] = None,
    traceback: TracebackOpt = False,
) -> None:
    """Write a PNG of loss curves comparing several runs, and one of the memories' inner-loop
    telemetry (state/update norms, inner loss before/after the writes) beside it; by default
    into the (first) run folder plotted, never the current folder."""
    with guard(traceback):
        from nestdsl.runtime.plot import has_memory_stats, plot_memories, plot_runs

        for d in run_dirs:
            if not (d / "metrics.jsonl").is_file():
                raise UserError(f"{d}: no metrics.jsonl (is this a run folder?)")
        if output is None:
            output = run_dirs[0] / ("loss.png" if len(run_dirs) == 1 else "loss-compare.png")
        plot_runs(run_dirs, output)
        out.print(f"wrote {output}")
        if has_memory_stats(run_dirs):
            mem_png = output.with_name(output.stem + "-memories" + output.suffix)
            plot_memories(run_dirs, mem_png)
            out.print(f"wrote {mem_png}")
