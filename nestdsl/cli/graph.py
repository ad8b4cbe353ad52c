"""`nestdsl graph`: the level graph as text, mermaid, dot, json, png or svg (torch-free)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from nestdsl.cli.app import TracebackOpt, app, out
from nestdsl.cli.errors import guard


class GraphFormat(str, Enum):
    text = "text"
    mermaid = "mermaid"
    dot = "dot"
    json = "json"
    png = "png"
    svg = "svg"


@app.command()
def graph(
    path: Annotated[Path, typer.Argument(help="spec file")],
    format: Annotated[GraphFormat, typer.Option("--format", "-f")] = GraphFormat.text,
    output: Annotated[Path | None, typer.Option("--output", "-o", help=(
        "output file (default: text formats to stdout; png/svg into the spec's run folder, "
        "runs/<spec file stem>/graph.png|svg)"))] = None,
    seq_len: Annotated[int | None, typer.Option(help="sequence length for the schedule")] = None,
    traceback: TracebackOpt = False,
) -> None:
    """Show the level graph: levels by frequency, edges (kind, grad/stop), read modes, timeline.

    Text formats print to stdout; a picture goes to the run folder `train` uses (never beside
    the spec), or to `-o`."""
    from nestdsl.cli.runtime_options import _run_dir
    from nestdsl.graph.render import render_graph
    from nestdsl.pipeline import load_spec

    with guard(traceback):
        spec = load_spec(path)
        render_graph(spec, format.value, output=output, seq_len=seq_len, console=out, default_png=_run_dir(path, None) / "graph.png")
