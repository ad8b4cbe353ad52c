"""`nestdsl schema`: the JSON Schema of the YAML spec form, or the markdown reference (torch-free)."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from nestdsl.cli.app import TracebackOpt, app
from nestdsl.cli.errors import guard


@app.command()
def schema(
    markdown: Annotated[bool, typer.Option(
        "--markdown", help="print the spec-language reference as markdown (docs/spec-reference.md)")] = False,
    traceback: TracebackOpt = False,
) -> None:
    """Print the JSON Schema of the YAML spec form (for editor autocompletion), or with
    --markdown the spec-language reference generated from the same models."""
    from nestdsl.spec import ir

    with guard(traceback):
        if markdown:
            from nestdsl.spec.reference import reference_markdown

            # written as is: the output is the committed docs/spec-reference.md byte for byte
            sys.stdout.write(reference_markdown())
            return
        s = ir.Spec.model_json_schema()
        s["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        s["title"] = "nestdsl spec"
        print(json.dumps(s, indent=2))
