"""Torch-side CLI commands: `train`, `eval`, `plot`. Imported by `nestdsl.cli`; torch is
imported inside the commands only, so the spec-only commands stay fast."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nestdsl.cli import TracebackOpt, UserError, _guard, app, out


def _run_dir(spec_path: Path, out_dir: Path | None) -> Path:
    return out_dir if out_dir is not None else Path("runs") / spec_path.stem


def _load(spec: Path, sets: list[str]) -> tuple[object, str]:
    """The spec with its `--set` overrides, and the text a checkpoint records for it (the file
    plus the overrides, so `--resume`/`eval` with other overrides is caught by the spec hash)."""
    from nestdsl.spec import load_spec, read_source

    spec_obj = load_spec(spec, overrides=sets)
    if spec_obj.model is None:
        raise UserError(f"{spec}: has no `model:` section (is this an optimizer spec?)")
    return spec_obj, read_source(spec) + "".join(f"\n# --set {s}" for s in sets)


ThreadsOpt = Annotated[
    int | None,
    typer.Option(
        "--threads",
        help="CPU intra-op threads (default 1: the tiny presets' small matmuls run fastest on one "
        "thread; measured 32k vs 5.5k tok/s on a shared 2-core machine). Raise it for wide models.",
    ),
]


def _set_threads(device: str, threads: int | None) -> None:
    import torch

    if device == "cpu" or threads is not None:
        if threads is not None and threads < 1:
            raise UserError("--threads must be >= 1")
        torch.set_num_threads(threads or 1)


def _check_device(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {device} requested but CUDA is not available on this machine")
        idx = torch.device(device).index
        if idx is not None and idx >= torch.cuda.device_count():
            raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device != "cpu":
        raise UserError(f"--device {device!r}: expected cpu, cuda or cuda:N")


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
    traceback: TracebackOpt = False,
) -> None:
    """Train a spec: progress, metrics JSONL, atomic checkpoints, exact --resume."""
    with _guard(traceback):
        sets = list(set_ or [])
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


@app.command("eval")
def eval_(
    spec: Annotated[Path, typer.Argument(help="spec file")],
    ckpt: Annotated[Path, typer.Option(help="checkpoint folder or run folder (uses its latest)")],
    task: Annotated[str, typer.Option(help="niah | text | mqar | copy | spec (the spec's own data)")] = "spec",
    lengths: Annotated[str | None, typer.Option(help="comma-separated sequence lengths (niah)")] = None,
    variants: Annotated[str, typer.Option(help="niah variants, e.g. 1,2,3")] = "1,2,3",
    path: Annotated[Path | None, typer.Option(help="text file/folder for --task text")] = None,
    batches: Annotated[int, typer.Option(help="evaluation batches per cell")] = 4,
    device: Annotated[str, typer.Option()] = "cpu",
    out_png: Annotated[Path | None, typer.Option("--png", help="heatmap output (niah)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="the overrides the run was trained with")] = None,
    threads: ThreadsOpt = None,
    traceback: TracebackOpt = False,
) -> None:
    """Evaluate a checkpoint: NIAH accuracy table + heatmap, or text loss / perplexity / bpb."""
    with _guard(traceback):
        spec_obj, spec_text = _load(spec, list(set_ or []))
        _check_device(device)
        _set_threads(device, threads)
        from nestdsl.runtime.evaluate import evaluate

        lens = _int_list(lengths, "--lengths") if lengths else None
        evaluate(
            spec_obj, spec_text=spec_text, ckpt=ckpt, task=task, lengths=lens,
            variants=_int_list(variants, "--variants"), text_path=path, batches=batches,
            device=device, out_png=out_png, console=out,
        )


def _int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{option} expects comma-separated integers, got {text!r}") from None
    if not values:
        raise UserError(f"{option} is empty")
    return values


@app.command()
def plot(
    run_dirs: Annotated[list[Path], typer.Argument(help="run folders to compare")],
    output: Annotated[Path, typer.Option("--output", "-o")] = Path("loss.png"),
    traceback: TracebackOpt = False,
) -> None:
    """Write a PNG of loss curves comparing several runs, and one of the memories' inner-loop
    telemetry (state/update norms, inner loss before/after the writes) beside it."""
    with _guard(traceback):
        from nestdsl.runtime.plot import has_memory_stats, plot_memories, plot_runs

        for d in run_dirs:
            if not (d / "metrics.jsonl").is_file():
                raise UserError(f"{d}: no metrics.jsonl (is this a run folder?)")
        plot_runs(run_dirs, output)
        out.print(f"wrote {output}")
        if has_memory_stats(run_dirs):
            mem_png = output.with_name(output.stem + "-memories" + output.suffix)
            plot_memories(run_dirs, mem_png)
            out.print(f"wrote {mem_png}")
