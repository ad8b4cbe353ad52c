"""`nestdsl check`: validate spec files (torch-free)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nestdsl.cli.app import TracebackOpt, app, out
from nestdsl.cli.errors import UserError, guard
from nestdsl.diagnostics import SpecError


def _spec_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(
                f for f in p.rglob("*") if f.suffix.lower() in (".yaml", ".yml", ".nest") and f.is_file()
            )
            if not found:
                raise UserError(f"{p}: no spec files (*.yaml, *.yml, *.nest) in this folder")
            files.extend(found)
        else:
            files.append(p)
    return files


@app.command()
def check(
    paths: Annotated[list[Path], typer.Argument(help="spec files or folders")],
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable diagnostics "
                                                             "(`nestdsl codes` explains each code)")] = False,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a spec field: key.path=value "
                                                   "(checked as if written in each file)")] = None,
    traceback: TracebackOpt = False,
) -> None:
    """Validate specs: every error with file:line:col, sorted by position. Exit 0 valid, 2 errors."""
    from nestdsl.diagnostics import Diagnostic
    from nestdsl.pipeline import load_spec

    with guard(traceback, as_json=as_json):
        files = _spec_files(paths)
        all_diags: list[Diagnostic] = []
        sources: dict[str, str] = {}
        bad_files: set[str] = set()
        seen: set[tuple[str, int, int, str]] = set()
        for f in files:
            try:
                load_spec(f, overrides=set_ or None)
            except SpecError as e:
                bad_files.add(str(f))
                sources.update(e.sources)
                for d in e.diagnostics:
                    # A referenced optimizer file's errors come back with every spec that uses
                    # it (and once more when the folder holds it): report each one once.
                    key = (d.span.file, d.span.line, d.span.col, d.message)
                    if key not in seen:
                        seen.add(key)
                        all_diags.append(d)
        if all_diags:
            for d in all_diags:
                if d.span.file not in sources:
                    # Undecodable files (invalid UTF-8) still show their line, with U+FFFD.
                    try:
                        raw = Path(d.span.file).read_bytes()
                    except OSError:
                        continue
                    if len(raw) <= 1_000_000:
                        sources[d.span.file] = raw.decode("utf-8", errors="replace")
            raise SpecError(all_diags, sources)
        if as_json:
            print("[]")
        else:
            for f in files:
                out.print(f"[green]ok[/green] {f}", highlight=False)
            out.print(f"{len(files)} spec{'s' if len(files) != 1 else ''} valid", highlight=False)
