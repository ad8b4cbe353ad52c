"""`nestdsl checkpoint convert`: a sharded (FSDP) checkpoint as a one-process safetensors one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nestdsl.cli.app import TracebackOpt, app, out
from nestdsl.cli.errors import guard

checkpoint_app = typer.Typer(help="Checkpoint tools: convert a sharded (FSDP) checkpoint.",
                             no_args_is_help=True)
app.add_typer(checkpoint_app, name="checkpoint")


@checkpoint_app.command()
def convert(
    src: Annotated[Path, typer.Argument(help="a sharded checkpoint folder (RUN/step_N) or its run folder (newest)")],
    out_dir: Annotated[Path, typer.Option("--out", help="run folder to write the safetensors checkpoint into")],
    traceback: TracebackOpt = False,
) -> None:
    """Write a sharded checkpoint of an FSDP run as a one-process safetensors checkpoint
    (model, optimizer states, loop state): `train --resume`, `eval` and `generate` read it
    like any other, on any machine, without torch.distributed."""
    with guard(traceback):
        from nestdsl.runtime.sharded import convert as convert_sharded

        written = convert_sharded(src, out_dir)
        out.print(f"wrote {written}")
