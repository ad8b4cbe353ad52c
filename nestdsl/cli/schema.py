"""`nestdsl schema`: the JSON Schema of the YAML spec form (torch-free)."""

from __future__ import annotations

import json

from nestdsl.cli.app import TracebackOpt, app
from nestdsl.cli.errors import guard


@app.command()
def schema(traceback: TracebackOpt = False) -> None:
    """Print the JSON Schema of the YAML spec form (for editor autocompletion)."""
    from nestdsl.spec import ir

    with guard(traceback):
        s = ir.Spec.model_json_schema()
        s["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        s["title"] = "nestdsl spec"
        print(json.dumps(s, indent=2))
