"""`nestdsl lm-eval ARGS…`: lm-evaluation-harness's own command line with the `nestdsl` model
registered (`runtime/harness.py`). lm-eval 0.4.13 finds models only in its own source tree (no
plugin entry points), so plain `lm_eval --model nestdsl` cannot see ours there; this command
imports the adapter, then hands every argument to lm_eval's CLI unchanged."""

from __future__ import annotations

import sys

import typer

from nestdsl.cli.app import app
from nestdsl.cli.errors import EXIT_SPEC


@app.command(
    "lm-eval",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                      "help_option_names": []},
    add_help_option=False,
)
def lm_eval_(ctx: typer.Context) -> None:
    """Run lm-evaluation-harness with the nestdsl model: every argument goes to lm_eval, e.g.
    `nestdsl lm-eval --model nestdsl --model_args ckpt=runs/tiny --tasks lambada_openai`
    (`nestdsl lm-eval run --help`: lm_eval's options). Needs pip install 'nestdsl\\[eval]'."""
    from nestdsl.runtime.harness import INSTALL_HINT, register

    try:
        register()
        from lm_eval.__main__ import cli_evaluate
    except ImportError:
        print(f"error: {INSTALL_HINT}", file=sys.stderr)
        raise typer.Exit(EXIT_SPEC) from None
    saved = sys.argv
    sys.argv = ["lm-eval", *ctx.args]
    try:
        cli_evaluate()
    finally:
        sys.argv = saved
