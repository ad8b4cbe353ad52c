"""The `nestdsl` command line: check | codes | fmt | graph | schema | compile | train | eval |
generate | plot | probe | reproduce | data | checkpoint | lm-eval.

One module per command, each registering on the app (`cli/app.py`); `cli/errors.py` maps
exceptions to messages and exit codes. Spec problems print compiler-style diagnostics and exit 2;
internal errors print one line and exit 1 (`--traceback` shows the Python traceback). The
spec-only commands (check, codes, fmt, graph, schema) never import torch: the torch-side commands
import it inside their functions.
"""

from nestdsl.cli import (  # noqa: F401
    check,
    checkpoint,
    codes,
    compile,
    data,
    evaluate,
    fmt,
    generate,
    graph,
    harness,
    plot,
    probe,
    reproduce,
    schema,
    train,
)
from nestdsl.cli.app import app, main

__all__ = ["app", "main"]
