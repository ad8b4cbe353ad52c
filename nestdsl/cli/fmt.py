"""`nestdsl fmt`: print a spec in canonical YAML or .nest (torch-free)."""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from nestdsl.cli.app import TracebackOpt, app
from nestdsl.cli.errors import UserError, guard


class Syntax(str, Enum):
    yaml = "yaml"
    nest = "nest"


def _same_file(a: Path, b: Path) -> bool:
    """Whether `b` names the file `a` (another spelling of the path, or a link to it)."""
    try:
        return b.exists() and os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


@app.command()
def fmt(
    path: Annotated[Path, typer.Argument(help="spec file")],
    to: Annotated[Syntax | None, typer.Option("--to", help="output syntax (default: same as input)")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write here instead of stdout")] = None,
    resolved: Annotated[bool, typer.Option("--resolved", help="print every field with the value the "
                                           "compiler uses: defaults, the spec-dependent ones "
                                           "(residual, MLP shape, init, erase rate) and a referenced "
                                           "optimizer, inlined")] = False,
    force: Annotated[bool, typer.Option("--force", help="allow `-o` to overwrite the input file "
                                        "(its comments are lost)")] = False,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a spec field: key.path=value")] = None,
    traceback: TracebackOpt = False,
) -> None:
    """Print a spec in canonical YAML or .nest form (comments are not kept)."""
    from nestdsl.pipeline import load_spec
    from nestdsl.spec import syntax_of
    from nestdsl.spec.printer import print_spec
    from nestdsl.spec.resolve import resolve
    from nestdsl.spec.shipped import shown_path

    with guard(traceback):
        if output is not None and not force and _same_file(path, output):
            raise UserError(f"refusing to overwrite the input {path} with -o {output}: fmt does not "
                            "keep comments; write to another file, or pass --force")
        spec = load_spec(path, overrides=set_ or None)
        text = print_spec(resolve(spec) if resolved else spec, (to.value if to else syntax_of(path)),
                          full=resolved)
        if resolved and isinstance(spec.optimizer, str) and spec.optimizer_file:
            # The reference is inlined; say where it was read from (a comment: parsing ignores it).
            text = (f"# optimizer {spec.optimizer!r}: read from {shown_path(Path(spec.optimizer_file))}, "
                    "inlined below\n" + text)
        if output:
            output.write_text(text)
        else:
            sys.stdout.write(text)
