"""`nestdsl train`: train a spec (progress, metrics, atomic checkpoints, exact --resume)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nestdsl.cli.app import TracebackOpt, app, out
from nestdsl.cli.errors import guard
from nestdsl.cli.runtime_options import (
    KernelOpt,
    ThreadsOpt,
    _check_device,
    _kernels,
    _load,
    _run_dir,
    _set_threads,
)


@app.command()
def train(
    spec: Annotated[Path, typer.Argument(help="spec file")],
    steps: Annotated[int | None, typer.Option(help="override train.steps")] = None,
    device: Annotated[str, typer.Option(help="cpu | cuda | cuda:N")] = "cpu",
    compile: Annotated[bool | None, typer.Option("--compile/--no-compile", help="torch.compile (default: train.compile)")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="run folder (default runs/<spec name>)")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue from the last good checkpoint")] = False,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a spec field: key.path=value")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    threads: ThreadsOpt = None,
    kernel: KernelOpt = None,
    traceback: TracebackOpt = False,
) -> None:
    """Train a spec: progress, metrics JSONL, atomic checkpoints, exact --resume."""
    with guard(traceback):
        sets = list(set_ or [])
        forced = _kernels(kernel)
        spec_obj, spec_text = _load(spec, sets)
        _check_device(device)
        _set_threads(device, threads)
        from nestdsl.runtime.distributed import from_env
        from nestdsl.runtime.progress import Progress
        from nestdsl.runtime.train import train as run_train

        dist = from_env(device)
        ok = False
        try:
            if dist is not None:
                device = dist.device
            run_dir = _run_dir(spec, out_dir)
            total = steps if steps is not None else (spec_obj.train.steps if spec_obj.train else 200)
            show = not quiet and (dist is None or dist.rank == 0)
            with Progress(total, enabled=show, title=f"{spec_obj.name} → {run_dir}") as progress:
                result = run_train(
                    spec_obj, spec_text=spec_text, run_dir=run_dir, steps=steps, device=device,
                    compile=compile, resume=resume, on_log=progress.update, distributed=dist,
                    kernels=forced,
                )
            if show:
                if result.start_step >= result.steps:
                    out.print(f"[bold]nothing to do[/bold]: {run_dir} is already at step {result.start_step}")
                else:
                    out.print(
                        f"[bold]done[/bold] {result.steps} steps · loss {result.first_loss:.3f} → "
                        f"{result.final_loss:.3f} · {result.tokens_per_s:,.0f} tok/s · {run_dir}"
                    )
            ok = True
        finally:
            if dist is not None:
                dist.close(ok=ok)
