"""`nestdsl probe`: is each memory layer dead, responsive or chaotic (runtime/probe.py)?"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from nestdsl.cli.app import TracebackOpt, app, err, out
from nestdsl.cli.errors import UserError, guard
from nestdsl.cli.runtime_options import ThreadsOpt, _load, _set_threads

_STYLE = {"responsive": "green", "dead": "yellow", "chaotic": "red"}


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.3g}"


def print_report(report: Any) -> None:
    from rich.table import Table

    table = Table(title=f"{report.spec}: memory dynamics "
                        f"{'at initialisation' if not report.steps else f'after {report.steps} steps'}"
                        f" ({report.sequences} S-NIAH-1 sequences)")
    table.add_column("layer", overflow="fold")
    for col in ("needle", "haystack", "branch\nshare", "write\nsize", "state\ngrowth"):
        table.add_column(col, justify="right")
    table.add_column("verdict", no_wrap=True, min_width=10)
    for lp in report.layers:
        table.add_row(lp.layer, _fmt(lp.needle), _fmt(lp.haystack), _fmt(lp.branch_share),
                      _fmt(lp.write_size), _fmt(lp.state_growth),
                      f"[{_STYLE[lp.verdict]}]{lp.verdict}[/]")
    out.print(table)
    out.print("needle / haystack: ‖y − y'‖/‖y‖ of the layer's output at the question when the pass "
              "key / 7 haystack letters change in its input · branch share ‖M(q) − q‖/‖M(q)‖ · write size "
              "‖Δθ‖/‖θ‖ per chunk · state growth ‖θ_T‖/‖θ_1‖ · chaotic ≥ 0.5, dead < 0.01 "
              "(docs/probe.md)")


@app.command()
def probe(
    spec: Annotated[Path, typer.Argument(help="spec file")],
    steps: Annotated[int, typer.Option(help="train this many steps first (0: at initialisation)")] = 0,
    sequences: Annotated[int, typer.Option(help="S-NIAH-1 probe sequences")] = 32,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a spec field: key.path=value")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    threads: ThreadsOpt = None,
    traceback: TracebackOpt = False,
) -> None:
    """Memory dynamics per layer: needle/haystack sensitivity, branch share, write size, verdict."""
    with guard(traceback):
        if steps < 0 or sequences < 1:
            raise UserError("--steps must be >= 0 and --sequences >= 1")
        spec_obj, spec_text = _load(spec, list(set_ or []))
        _set_threads("cpu", threads)
        from nestdsl.runtime.probe import probe as run_probe

        try:
            report = run_probe(spec_obj, spec_text=spec_text, steps=steps, sequences=sequences,
                               source=str(spec),
                               progress=None if as_json else (lambda m: err.print(f"[dim]{m}…[/dim]")))
        except ValueError as e:
            raise UserError(f"{spec}: {e}") from None
        if not report.layers:
            raise UserError(f"{spec}: the model has no memory layer to probe")
        if as_json:
            out.print_json(json.dumps(report.to_dict()))
        else:
            print_report(report)
