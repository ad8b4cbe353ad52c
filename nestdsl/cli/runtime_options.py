"""What `train`, `eval` and `plot` share: run folders, the spec with its overrides, threads,
devices."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from nestdsl.cli.errors import UserError

if TYPE_CHECKING:
    from nestdsl.runtime.run_spec import RunSpec
    from nestdsl.spec import ir


def _run_dir(spec_path: Path, out_dir: Path | None) -> Path:
    return out_dir if out_dir is not None else Path("runs") / spec_path.stem


def _load(spec: Path, sets: list[str]) -> tuple[ir.Spec, str]:
    """The spec with its `--set` overrides, and the text a checkpoint records for it (the file
    plus the overrides, so `--resume`/`eval` with other overrides is caught by the spec hash)."""
    from nestdsl.pipeline import load_spec
    from nestdsl.spec import read_source

    spec_obj = load_spec(spec, overrides=sets)
    if spec_obj.model is None:
        raise UserError(f"{spec}: has no `model:` section (is this an optimizer spec?)")
    return spec_obj, read_source(spec) + "".join(f"\n# --set {s}" for s in sets)


def _run_spec(spec: Path | None, sets: list[str], ckpt: Path | None, *, what: str) -> RunSpec:
    """The spec a command runs with (`runtime.run_spec.RunSpec`): the file when given, else the
    one stored in the checkpoint at `ckpt` (a run folder or a step folder)."""
    from nestdsl.runtime.run_spec import RunSpec, from_checkpoint

    if spec is not None:
        spec_obj, text = _load(spec, sets)
        return RunSpec(spec_obj, text, "file")
    if ckpt is None:
        raise UserError(f"{what} needs a spec file, or a run folder whose checkpoint stores one")
    run = from_checkpoint(ckpt, sets)
    if run.spec.model is None:
        raise UserError(f"{ckpt}: the stored spec has no `model:` section")
    return run


ForceOpt = Annotated[bool, typer.Option(
    "--force", help="load a checkpoint even if its spec means something else than the given one")]


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


KernelOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--kernel",
        help="force a memory kernel: NAME for every parametric memory, or MEMORY=NAME "
        "(repeatable); NAME is auto, reference, chunked, compiled, triton or fla "
        "(`nestdsl compile --explain` shows each layer's candidates)",
    ),
]


def _kernels(values: list[str] | None) -> dict[str, str]:
    """--kernel values → {memory name or "*": kernel}."""
    forced: dict[str, str] = {}
    for v in values or []:
        name, sep, kernel = v.partition("=")
        if not sep:
            name, kernel = "*", v
        if not name or not kernel:
            raise UserError(f"--kernel {v!r}: expected NAME or MEMORY=NAME")
        forced[name.strip()] = kernel.strip()
    return forced
