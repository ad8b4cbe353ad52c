"""The `nestdsl` command line: check | fmt | graph | schema | compile | train | eval | plot | bench.

Spec problems print compiler-style diagnostics and exit 2; internal errors print one line and
exit 1 (`--traceback` shows the Python traceback for debugging). The spec-only commands
(check, fmt, graph, schema) never import torch.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from nestdsl.diagnostics import SpecError

app = typer.Typer(
    name="nestdsl",
    help="A declarative language and compiler for Nested Learning systems.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

EXIT_OK, EXIT_INTERNAL, EXIT_SPEC = 0, 1, 2

TracebackOpt = Annotated[bool, typer.Option("--traceback", help="show Python tracebacks (debugging)")]


class UserError(Exception):
    """A problem with the command's input (not the spec text): one line, exit 2."""


@contextmanager
def _guard(traceback: bool, *, as_json: bool = False) -> Iterator[None]:
    """Map exceptions to exit codes: SpecError → 2 with diagnostics, anything else → 1."""
    try:
        yield
    except SpecError as e:
        if traceback:
            raise
        if as_json:
            print(e.to_json())
        else:
            print(e.render(), file=sys.stderr)
            n = len(e.diagnostics)
            print(f"{n} error{'s' if n != 1 else ''}", file=sys.stderr)
        raise typer.Exit(EXIT_SPEC) from None
    except UserError as e:
        if traceback:
            raise
        print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(EXIT_SPEC) from None
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001 - the CLI's last line of defence
        if traceback:
            raise
        from nestdsl.runtime_errors import user_message

        message, code = user_message(e)
        print(f"error: {message}", file=sys.stderr)
        if code == EXIT_INTERNAL:
            print("(internal error; rerun with --traceback for details)", file=sys.stderr)
        raise typer.Exit(code) from None


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


# ---------------------------------------------------------------------------------------------
# Spec commands (torch-free)


@app.command()
def check(
    paths: Annotated[list[Path], typer.Argument(help="spec files or folders")],
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable diagnostics")] = False,
    traceback: TracebackOpt = False,
) -> None:
    """Validate specs: every error with file:line:col, sorted by position. Exit 0 valid, 2 errors."""
    from nestdsl.diagnostics import Diagnostic
    from nestdsl.spec import load_spec

    with _guard(traceback, as_json=as_json):
        files = _spec_files(paths)
        all_diags: list[Diagnostic] = []
        sources: dict[str, str] = {}
        bad_files: set[str] = set()
        seen: set[tuple[str, int, int, str]] = set()
        for f in files:
            try:
                load_spec(f)
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

    with _guard(traceback):
        spec = load_spec(path)
        if resolved:
            spec = resolve(spec)
        text = print_spec(spec, (to.value if to else syntax_of(path)))
        if output:
            output.write_text(text)
        else:
            sys.stdout.write(text)


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
    output: Annotated[Path | None, typer.Option("--output", "-o", help="output file (png/svg: default <spec>.png/.svg)")] = None,
    seq_len: Annotated[int | None, typer.Option(help="sequence length for the schedule")] = None,
    traceback: TracebackOpt = False,
) -> None:
    """Show the level graph: levels by frequency, edges (kind, grad/stop), read modes, timeline."""
    from nestdsl.graph.render import render_graph
    from nestdsl.spec import load_spec

    with _guard(traceback):
        spec = load_spec(path)
        render_graph(spec, format.value, output=output, seq_len=seq_len, console=out, default_png=path.with_suffix(".png"))


@app.command()
def schema(traceback: TracebackOpt = False) -> None:
    """Print the JSON Schema of the YAML spec form (for editor autocompletion)."""
    from nestdsl.spec import ir

    with _guard(traceback):
        s = ir.Spec.model_json_schema()
        s["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        s["title"] = "nestdsl spec"
        print(json.dumps(s, indent=2))


def main(argv: list[str] | None = None) -> Any:
    """Console-script entry point."""
    return app(args=argv)


def register(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator used by the torch-side command modules to add themselves to the app."""
    return app.command()(fn)


# torch-side commands (compile, train, eval, plot, bench) are defined in nestdsl/cli_run.py and
# imported here lazily so `check`/`fmt`/`graph`/`schema` stay torch-free at import time.
from nestdsl import cli_run as _cli_run  # noqa: E402,F401  (compile, bench)
from nestdsl import cli_train as _cli_train  # noqa: E402,F401  (train, eval, plot)

if __name__ == "__main__":
    main()
