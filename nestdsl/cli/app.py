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


def _show_spec_warnings() -> None:
    """Print a spec's warnings (`nestdsl.diagnostics.SpecWarning`) the way errors print —
    `file:line:col: warning: ...`, the line, a caret, a hint — on stderr, without Python's
    `module.py:123: SpecWarning:` prefix; any other warning as one line, `warning: message`
    (a user reads what happened, not which line of nestdsl noticed it)."""
    import sys
    import warnings

    from nestdsl.diagnostics import SpecWarning

    previous = warnings.showwarning
    if getattr(previous, "nestdsl_spec_warnings", False):
        return

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: Any = None, line: str | None = None) -> None:
        if issubclass(category, SpecWarning):
            print(str(message), file=file or sys.stderr)
        else:
            print(f"warning: {message}", file=file or sys.stderr)

    show.nestdsl_spec_warnings = True  # type: ignore[attr-defined]
    warnings.showwarning = show


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="print the version and exit")] = False,
) -> None:
    """A declarative language and compiler for Nested Learning systems."""
    _show_spec_warnings()


TracebackOpt = Annotated[bool, typer.Option("--traceback", help="show Python tracebacks (debugging)")]


def main(argv: list[str] | None = None) -> Any:
    """Console-script entry point."""
    return app(args=argv)
