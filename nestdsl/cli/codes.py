"""`nestdsl codes`: the diagnostic codes, what each means and the usual fix (torch-free)."""

from __future__ import annotations

from typing import Annotated

import typer

from nestdsl.cli.app import TracebackOpt, app
from nestdsl.cli.errors import UserError, guard


@app.command()
def codes(
    code: Annotated[str | None, typer.Argument(help="a code to explain, e.g. unknown-ref")] = None,
    traceback: TracebackOpt = False,
) -> None:
    """List the diagnostic codes (the `code` of `nestdsl check --json`) with what each means, or
    explain one: its meaning and the usual fix."""
    from nestdsl.codes import CODES, Code, explain
    from nestdsl.diagnostics import did_you_mean

    with guard(traceback):
        if code is None:
            for c, info in CODES.items():
                print(f"{c.value:<14} {info.severity:<8} {info.summary}")
            return
        if code not in {c.value for c in Code}:
            dym = did_you_mean(code, [c.value for c in Code])
            raise UserError(f"unknown diagnostic code '{code}'" + (f"; {dym}" if dym else "")
                            + " (`nestdsl codes` lists them)")
        print(explain(Code(code)))
