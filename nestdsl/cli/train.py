"""`nestdsl train`: train a spec (progress, metrics, atomic checkpoints, exact --resume)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated

import typer

from nestdsl.cli.app import TracebackOpt, app, err, out
from nestdsl.cli.errors import UserError, guard
from nestdsl.cli.runtime_options import (
    ForceOpt,
    KernelOpt,
    ThreadsOpt,
    _check_device,
    _kernels,
    _run_dir,
    _run_spec,
    _set_threads,
)
from nestdsl.runtime.preempt import Interrupted


@app.command()
def train(
    spec: Annotated[Path | None, typer.Argument(
        help="spec file (with --resume: optional, default the spec the run's checkpoint stores)")] = None,
    steps: Annotated[int | None, typer.Option(help="override train.steps")] = None,
    device: Annotated[str, typer.Option(help="cpu | cuda | cuda:N")] = "cpu",
    compile: Annotated[bool | None, typer.Option("--compile/--no-compile", help="torch.compile (default: train.compile if the spec sets it, else on for CUDA, off for CPU)")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="run folder (default runs/<spec file stem>: runs/hope for specs/hope.yaml)")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue from the last good checkpoint")] = False,
    parallel: Annotated[str | None, typer.Option(help="under torchrun: ddp | fsdp (default: train.parallel, else ddp)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a spec field: key.path=value")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    threads: ThreadsOpt = None,
    kernel: KernelOpt = None,
    force: ForceOpt = False,
    traceback: TracebackOpt = False,
) -> None:
    """Train a spec: progress, metrics JSONL, atomic checkpoints, exact --resume.

    SIGTERM or Ctrl-C finishes the current step, checkpoints it and exits 75 (resume with
    --resume); a second signal stops at once (exit 128 + the signal number).
    """
    with guard(traceback):
        sets = list(set_ or [])
        forced = _kernels(kernel)
        if spec is None and not (resume and out_dir is not None):
            raise UserError("train needs a spec file (or --resume --out RUN to continue a run "
                            "with the spec its checkpoint stores)")
        run_spec = _run_spec(spec, sets, out_dir, what="train")
        spec_obj, spec_text = run_spec.spec, run_spec.text
        _check_device(device)
        if parallel not in (None, "ddp", "fsdp"):
            raise UserError(f"--parallel must be ddp or fsdp, got {parallel!r}")
        _set_threads(device, threads)
        from nestdsl.runtime.distributed import from_env
        from nestdsl.runtime.progress import Progress
        from nestdsl.runtime.train import train as run_train

        dist = from_env(device)
        run_dir = out_dir if spec is None else _run_dir(spec, out_dir)
        assert run_dir is not None               # no spec: --out was required above
        ok = False
        try:
            if dist is not None:
                device = dist.device
            total = steps if steps is not None else (spec_obj.train.steps if spec_obj.train else 200)
            show = not quiet and (dist is None or dist.rank == 0)
            with Progress(total, enabled=show, title=f"{spec_obj.name} → {run_dir}") as progress:
                result = run_train(
                    spec_obj, spec_text=spec_text, run_dir=run_dir, steps=steps, device=device,
                    compile=compile, resume=resume, on_log=progress.update, distributed=dist,
                    kernels=forced, force=force, on_status=progress.status, parallel=parallel,
                    say=(lambda msg: err.print(msg, highlight=False)) if show else None,
                )
            if result.stopped_by is not None:
                from nestdsl.runtime.preempt import EXIT_PREEMPTED

                if dist is None or dist.rank == 0:
                    err.print(f"stopped by {result.stopped_by} after step {result.steps}: its checkpoint "
                              f"is written; `nestdsl train --resume --out {run_dir}` continues "
                              f"(exit {EXIT_PREEMPTED})", highlight=False)
                ok = True
                raise typer.Exit(EXIT_PREEMPTED)
            if show:
                if result.start_step >= result.steps:
                    out.print(f"[bold]nothing to do[/bold]: {run_dir} is already at step {result.start_step}")
                else:
                    # tok/s leaves out this process's first step (torch.compile, warm-up)
                    first = (f" (first step {result.first_step_s:.1f} s with compile)"
                             if result.compiled else "")
                    out.print(
                        f"[bold]done[/bold] {result.steps} steps · loss {result.first_loss:.3f} → "
                        f"{result.final_loss:.3f} · {result.tokens_per_s:,.0f} tok/s{first} · {run_dir}"
                    )
            ok = True
        except (KeyboardInterrupt, Interrupted) as e:
            # Ctrl-C before the loop started, or a second signal inside it: stop at once
            from nestdsl.runtime.checkpoint import find_latest

            last = find_latest(run_dir)
            kept = (f"the last checkpoint {last} is kept; `nestdsl train --resume --out {run_dir}` "
                    "continues from it" if last is not None else "no checkpoint was written yet")
            err.print(f"interrupted: {kept}", highlight=False)
            code = 128 + (e.signum if isinstance(e, Interrupted) else signal.SIGINT)
            raise typer.Exit(code) from None
        finally:
            if dist is not None:
                dist.close(ok=ok)
