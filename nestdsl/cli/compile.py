"""`nestdsl compile`: lower a spec and print the plan (`--explain`: how each layer computes)."""

from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from nestdsl.cli.app import TracebackOpt, app, out
from nestdsl.cli.errors import UserError, guard
from nestdsl.cli.runtime_options import KernelOpt, _kernels
from nestdsl.spec.periods import LevelKind


def _plan_table(system: Any) -> Table:
    table = Table(title=f"{system.spec.name}: lowering plan", show_lines=False, pad_edge=False)
    columns: tuple[tuple[str, dict[str, Any]], ...] = (
        ("layer", {}), ("kind", {}), ("implementation", {}), ("C", {"justify": "right"}),
        ("read", {}), ("writes", {}), ("params", {"justify": "right"}), ("compiled", {}),
        ("kernel", {}))
    for col, kw in columns:
        table.add_column(col, **kw)
    for r in system.plan:
        table.add_row(r.name, r.kind, r.implementation, "" if r.chunk_size is None else str(r.chunk_size),
                      r.read or "", r.writes or "", f"{r.params:,}", r.compiled, r.kernel or "")
    return table


def _print_wide(renderable: Any) -> None:
    """Tables are wider than a pipe's default 80 columns; give them room when not a terminal."""
    from rich.console import Console

    width = out.width if out.is_terminal else max(out.width, 140)
    Console(width=width, soft_wrap=False, no_color=out.no_color).print(renderable)


def _graph_breaks(system: Any, device: str) -> tuple[dict[str, int], float]:
    """Compile on a tiny input (forward + backward) and count dynamo's graph breaks."""
    import torch
    from torch._dynamo.utils import counters

    chunks = [r.chunk_size for r in system.plan if r.chunk_size]
    T = max(32, 2 * max(chunks, default=1))
    tokens = torch.randint(0, system.model.vocab, (1, T), device=device)
    counters.clear()
    t0 = time.perf_counter()
    system.model.loss(tokens, tokens).backward()
    system.model.zero_grad(set_to_none=True)
    return dict(counters.get("graph_break", {})), time.perf_counter() - t0


def _explain(system: Any, device: str, compiled: bool) -> None:
    from nestdsl.lower.memory import MemoryMixer

    out.rule("per-chunk step of each layer")
    steps: dict[str, Any] = {}
    for name, layer in system.model.iter_layers():
        explain = getattr(layer, "explain", None)
        if callable(explain):
            out.print(f"[bold]{name}[/bold]")
            for line in explain():
                out.print("  " + line, markup=False, highlight=False)
        for mod in layer.modules():
            if isinstance(mod, MemoryMixer):
                from nestdsl.ops import linear_chunk_step, mlp_chunk_step

                fn = mlp_chunk_step if mod.mlp is not None else linear_chunk_step
                steps[f"{fn.__module__}.{fn.__name__}"] = fn
    for qual, fn in steps.items():
        out.rule(f"step function {qual} ({Path(inspect.getsourcefile(fn) or '?').name}:"
                 f"{inspect.getsourcelines(fn)[1]})")
        from rich.syntax import Syntax

        out.print(Syntax(inspect.getsource(fn), "python", line_numbers=False))
    out.rule("memory kernels (ops/kernels.py; force one with --kernel [MEMORY=]NAME)")
    for mod in system.model.modules():
        for row in getattr(mod, "kernel_rows", list)():
            forced = row.forced
            how = f"forced by --kernel {forced}" if forced not in (None, "auto") else "automatic"
            out.print(f"[bold]{row.label}[/bold] ({row.memory}): {row.shown} ({how})")
            for kname, why in row.verdicts:
                verdict = "can run" if why is None else f"refused: {why.reason}"
                out.print(f"  {kname:<10} {verdict}", markup=False, highlight=False)
    out.rule("torch.compile")
    if not compiled:
        out.print("graph breaks: not measured (--no-compile)")
        return
    breaks, secs = _graph_breaks(system, device)
    out.print(f"first compiled forward+backward on a tiny input: {secs:.1f} s")
    if breaks:
        out.print(f"graph breaks: {sum(breaks.values())}")
        for reason, n in sorted(breaks.items(), key=lambda kv: -kv[1]):
            out.print(f"  {n}× {reason}", markup=False, highlight=False)
    else:
        out.print("graph breaks: 0")
    fails = system.model._compile_config.failures
    for name, reason in fails.items():
        out.print(f"[yellow]compile fallback[/yellow] {name}: {reason}")


#: `--explain` probes models up to this size (a tiny preset takes ~4 s on one CPU thread; the
#: paper-scale presets would take minutes: `nestdsl probe` runs it on purpose)
EXPLAIN_PROBE_MAX_PARAMS = 20_000_000


def _dynamics(spec_obj: Any, path: Path, params: int) -> None:
    """The probe's verdicts at initialisation (runtime/probe.py): warn on dead or chaotic
    memories, which train but do not learn to retrieve."""
    from nestdsl.runtime.probe import probe

    out.rule("memory dynamics at initialisation (nestdsl probe)")
    if params > EXPLAIN_PROBE_MAX_PARAMS:
        out.print(f"not probed: {params:,} parameters (more than {EXPLAIN_PROBE_MAX_PARAMS:,}); "
                  f"run `nestdsl probe {path}`")
        return
    try:
        report = probe(spec_obj, sequences=8, source=str(path))
    except ValueError as e:          # a spec the probe cannot feed (e.g. not a byte vocabulary)
        out.print(f"not probed: {e}", markup=False, highlight=False)
        return
    for lp in report.layers:
        line = f"{lp.layer}: {lp.verdict} (needle {lp.needle:.3g}, haystack {lp.haystack:.3g})"
        if lp.verdict == "responsive":
            out.print(line, markup=False, highlight=False)
        else:
            why = ("nothing distant reaches its output: it cannot retrieve" if lp.verdict == "dead"
                   else "its output moves by ~its own size with any distant change")
            out.print(f"[yellow]warning[/yellow]: {line}: {why}; `nestdsl probe {path}` for the "
                      "details, docs/probe.md")


@app.command("compile")
def compile_command(
    spec: Annotated[Path, typer.Argument(help="spec file")],
    explain: Annotated[bool, typer.Option("--explain", help="show per-chunk steps and graph breaks")] = False,
    device: Annotated[str, typer.Option(help="cpu | cuda | cuda:N")] = "cpu",
    no_compile: Annotated[bool, typer.Option("--no-compile", help="eager only (no torch.compile)")] = False,
    kernel: KernelOpt = None,
    traceback: TracebackOpt = False,
) -> None:
    """Lower a spec and print the plan: what each memory/level became, and the parameter count."""
    from nestdsl.pipeline import load_spec

    with guard(traceback):
        spec_obj = load_spec(spec)
        if spec_obj.model is None:
            raise UserError(f"{spec}: has no `model:` section (is this an optimizer spec?)")
        import torch

        import nestdsl

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError("--device cuda requested but CUDA is not available on this machine")
        try:
            system = nestdsl.compile(spec_obj, device=device, compile=not no_compile,
                                     kernels=_kernels(kernel))
        except ValueError as e:      # an unknown kernel or memory name in --kernel
            raise UserError(str(e)) from None
        _print_wide(_plan_table(system))
        out.rule("updates")
        for r in system.plan:
            if r.update:
                out.print(f"[bold]{r.name}[/bold]: ", end="")
                out.print(r.update, markup=False, highlight=False)
            for n in r.notes:
                out.print(f"    {n}", markup=False, highlight=False)
        out.rule("levels")
        for lv in system.levels:
            extra = f", state in {len(lv.state)} layer(s)" if lv.state else ""
            k = f", every {lv.every_k} step(s)" if lv.kind != LevelKind.IN_CONTEXT else ""
            out.print(f"{lv.name}: {lv.kind}, period {lv.period}{k}, {lv.param_count:,} params{extra}")
        for n in system.notes:
            out.print(f"note: {n}")
        if explain:
            _explain(system, device, compiled=not no_compile)
            _dynamics(spec_obj, spec, system.param_count)
            if system.model._compile_config.failures:   # show the fallbacks in the plan too
                _print_wide(_plan_table(system))
        out.print(f"total parameters: {system.param_count:,}")
