"""`nestdsl fmt`: print a spec in canonical YAML or .nest (torch-free)."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from nestdsl.cli.app import TracebackOpt, app
from nestdsl.cli.errors import guard


class Syntax(str, Enum):
    yaml = "yaml"
    nest = "nest"


@app.command()
def fmt(
    path: Annotated[Path, typer.Argument(help="spec file")],
    to: Annotated[Syntax | None, typer.Option("--to", help="output syntax (default: same as input)")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write here instead of stdout")] = None,
    resolved: Annotated[bool, typer.Option("--resolved", help="fill in every default the compiler "
                                           "decides (residual, MLP shape, init, erase rate)")] = False,
    traceback: TracebackOpt = False,
) -> None:
    """Print a spec in canonical YAML or .nest form (comments are not kept)."""
    from nestdsl.spec import load_spec, syntax_of
    from nestdsl.spec.printer import print_spec
    from nestdsl.spec.resolve import resolve

    with guard(traceback):
        spec = load_spec(path)
        if resolved:
            spec = resolve(spec)
        text = print_spec(spec, (to.value if to else syntax_of(path)))
        if output:
            output.write_text(text)
        else:
            sys.stdout.write(text)
