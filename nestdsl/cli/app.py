"""The Typer application every command registers on, its consoles and shared options."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console

app = typer.Typer(
    name="nestdsl",
    help="A declarative language and compiler for Nested Learning systems.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def _print_version(value: bool) -> None:
    if value:
        from nestdsl import __version__

        out.print(f"nestdsl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="print the version and exit")] = False,
) -> None:
    """A declarative language and compiler for Nested Learning systems."""


TracebackOpt = Annotated[bool, typer.Option("--traceback", help="show Python tracebacks (debugging)")]


def main(argv: list[str] | None = None) -> Any:
    """Console-script entry point."""
    return app(args=argv)
