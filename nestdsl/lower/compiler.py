"""`compile_spec`: spec → `CompiledSystem` (model, plan, levels, schedule).

torch.compile strategy (docs/design.md §6): every layer compiles its own pieces, each with an eager
twin (`common.Compiled`): the q/k/v/gate projections and the output path of a memory layer, the
whole attention / MLP layer, and — through `nestdsl.ops.memory_scan(compile=True)` — the
per-chunk step of every memory. The loop over chunks stays in Python, so no graph grows with the
sequence length T and compile time is independent of T. A compile failure switches that piece to
eager and is recorded in the plan (`compiled` column) and warned about, never silent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from nestdsl.graph.schedule import Level, Schedule
from nestdsl.lower.common import BuildContext, CompileConfig, spec_error
from nestdsl.lower.layer import PlanRow
from nestdsl.lower.model import NestModel
from nestdsl.lower.size import check_size
from nestdsl.ops.kernels import Refusal
from nestdsl.pipeline import ensure_checked, load_spec
from nestdsl.spec import ir
from nestdsl.spec.periods import LevelKind
from nestdsl.vocabulary import PARAMETRIC_KINDS


@dataclass
class LevelInfo:
    """A level bound to what it owns in the model (the level itself is the schedule's `Level`).

    kind OUTER (the built-in `step` level: every parameter not owned elsewhere, k = 1),
    PERSISTENT (a CMS level updated by the outer optimizer every `every_k` steps with the
    gradient accumulated in between, docs/design.md §3.3) or IN_CONTEXT (updated inside the
    sequence; its state lives in the streaming state of the layers listed in `state`, no
    parameters).
    """

    level: Level
    params: list[nn.Parameter] = field(default_factory=list)
    state: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.level.name

    @property
    def kind(self) -> LevelKind:
        return self.level.kind

    @property
    def period(self) -> str:
        return self.level.period

    @property
    def every_k(self) -> int:
        return self.level.every_k

    @property
    def param_count(self) -> int:
        return sum(p.numel() for p in self.params)


@dataclass
class CompiledSystem:
    spec: ir.Spec
    model: NestModel
    levels: list[LevelInfo]
    schedule: Schedule
    notes: list[str] = field(default_factory=list)

    @property
    def plan(self) -> list[PlanRow]:
        """Re-collected on every access, so a compile fallback that happened since shows up."""
        rows = self.model.plan()
        fails = self.model._compile_config.failures
        if fails:
            rows.append(PlanRow(name="compile fallbacks", kind="note", implementation="eager",
                                compiled="eager (compile failed)",
                                notes=[f"{k}: {v}" for k, v in fails.items()]))
        return rows

    @property
    def param_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def set_compile(self, enabled: bool) -> None:
        self.model.set_compile(enabled)


def _levels(sched: Schedule, model: NestModel) -> list[LevelInfo]:
    """Each level with the parameters (persistent) or layer states (in-context) it owns; the
    outer `step` level owns every parameter no persistent level claims."""
    persistent: dict[str, list[nn.Parameter]] = {}
    in_context: dict[str, list[str]] = {}
    from nestdsl.lower.memory import MemoryMixer

    for name, layer in model.iter_layers():
        lp = getattr(layer, "level_params", None)
        if callable(lp):
            for lvl, params in lp().items():
                persistent.setdefault(lvl, []).extend(params)
        ic = getattr(layer, "in_context_levels", None)
        if callable(ic):
            for lvl in ic():
                in_context.setdefault(lvl, []).append(name)
    for mod in model.modules():
        if isinstance(mod, MemoryMixer):
            in_context.setdefault(mod.ir.level or "token", []).append(mod.name)

    levels: list[LevelInfo] = []
    owned: set[int] = set()
    for lvl, params in persistent.items():
        level = sched.level(lvl)
        assert level.kind == LevelKind.PERSISTENT and level.every_k, level  # the checker's rule
        uniq = [p for p in params if id(p) not in owned]
        owned.update(id(p) for p in uniq)
        levels.append(LevelInfo(level, uniq))
    for lvl, holders in in_context.items():
        levels.append(LevelInfo(sched.level(lvl), [], holders))
    outer = [p for p in model.parameters() if id(p) not in owned]
    levels.insert(0, LevelInfo(sched.level("step"), outer))
    return levels


def _check_kernels(spec: ir.Spec, kernels: dict[str, str]) -> dict[str, str]:
    """Forced kernels: known kernel names, memories the spec declares (ValueError otherwise)."""
    from nestdsl.ops.kernels import KERNELS

    parametric = sorted(n for n, m in spec.memories.items() if m.kind in PARAMETRIC_KINDS)
    for name, kernel in kernels.items():
        if kernel not in (*KERNELS, "auto"):
            raise ValueError(f"kernel {kernel!r} for {name!r} is unknown; known: auto, "
                             + ", ".join(KERNELS))
        if name != "*" and name not in parametric:
            raise ValueError(f"--kernel {name}={kernel}: the spec has no parametric memory "
                             f"{name!r}; its memories: {', '.join(parametric) or 'none'}")
    return dict(kernels)


def _check_forced_kernels(model: torch.nn.Module) -> None:
    """A forced kernel must be able to run each memory it names, on this device (ValueError
    with the kernel's own reason; the length T is checked per call)."""
    for mod in model.modules():
        for row in getattr(mod, "kernel_rows", list)():
            if isinstance(row.chosen, Refusal):   # only a forced kernel can refuse
                raise ValueError(f"memory {row.memory!r} ({row.label}): {row.chosen}")


def compile_spec(spec_or_path: ir.Spec | str | Path, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, compile: bool = True,  # noqa: A002
                 kernels: dict[str, str] | None = None) -> CompiledSystem:
    """Lower a spec to a trainable system.

    Args:
        spec_or_path: a `Spec` (checked first unless it came from `load_spec`) or a path to a
            spec file (loaded and checked).
        device, dtype: where the parameters live.
        compile: torch.compile the per-layer pieces and per-chunk steps (eager twins otherwise;
            switch later with `system.set_compile(flag)`).
        kernels: force a memory kernel (``ops.kernels``: reference, chunked, compiled, triton,
            fla) per spec memory name, or for all with ``"*"``; the others choose automatically.
    Raises:
        SpecError: the spec cannot be lowered (positioned diagnostics).
    """
    # the check stage first: a parsed-only or Python-built spec is checked here, so the
    # lowering below never re-validates (nestdsl/pipeline.py)
    spec = ensure_checked(spec_or_path) if isinstance(spec_or_path, ir.Spec) else load_spec(spec_or_path)
    if spec.model is None:
        raise spec_error(spec, spec, f"spec '{spec.name}' has no `model:` section to lower",
                         "this looks like an optimizer spec; use it from a model spec's `optimizer:`")
    forced = _check_kernels(spec, kernels or {})
    ctx = BuildContext(spec=spec, compile=CompileConfig(enabled=compile, kernels=forced))
    check_size(spec, ctx, device=device)          # before allocating: a typo'd width or depth
    model = NestModel(ctx)
    notes: list[str] = []
    if model.uses_task_sweep:
        notes.append("loss: chunked task sweep (in-context CMS levels with the task signal)")
    model = model.to(device=device, dtype=dtype)
    if forced:
        _check_forced_kernels(model)
    return CompiledSystem(spec=spec, model=model, levels=_levels(ctx.schedule, model),
                          schedule=ctx.schedule, notes=notes)
