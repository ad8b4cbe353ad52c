"""Semantic checks: every problem in a validated spec, as positioned diagnostics with hints.

`validate.py` has already enforced types, enums, required fields and numeric ranges (pydantic);
this module checks what the IR types cannot express: references between named things, period
classification against the data shape (docs/design.md §3.3), invalid combinations of fields, unused
definitions, head counts, data-task constraints and the outer optimizer reference.

Every check appends to one list (nothing stops at the first error) and every diagnostic points
at the offending field. Nothing here imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any

from nestdsl.check.registry import objective_names
from nestdsl.codes import Code
from nestdsl.diagnostics import Diagnostic, SpecError, SpecWarning, choices_hint, did_you_mean
from nestdsl.spec import ir
from nestdsl.spec.periods import DataShape, LevelClass, LevelKind, classify, divisors_near
from nestdsl.spec.source import Document, Path
from nestdsl.spec.validate import PartialSpec
from nestdsl.vocabulary import PROJECTION_READ

__all__ = ["check_spec", "collect_diagnostics"]


_ABSENT = object()  # sentinel: `Document.find` found nothing


def collect_diagnostics(
    spec: ir.Spec, doc: Document, *, broken: dict[str, set[str]] | None = None,
    include_warnings: bool = False,
) -> list[Diagnostic]:
    """All semantic problems of `spec` (parsed from `doc`), sorted by position.

    `broken` names what validation already rejected and removed ({"memories": {"x"}, "data":
    set()}): references to those are not reported again, and checks that would see a
    misleadingly incomplete spec (unused entries, periods without the data shape) are skipped.
    Warnings (severity "warning": valid, but likely not what the author wants) only with
    `include_warnings`.
    """
    ctx = _Ctx(spec, doc, broken=dict(broken or {}))
    for check in _CHECKS:
        check(ctx)
    # One diagnostic per position and message: two checks may reach the same fact.
    unique: dict[tuple[Any, ...], Diagnostic] = {}
    for d in ctx.diags:
        if include_warnings or d.severity != "warning":
            unique.setdefault((d.span.file, d.span.line, d.span.col, d.message), d)
    return sorted(unique.values(), key=Diagnostic.sort_key)


def with_semantic_problems(error: SpecError) -> SpecError:
    """A validation error plus the semantic problems of the part of the spec that did validate,
    so one run shows every error instead of one section at a time."""
    partial = error.partial
    if not isinstance(partial, PartialSpec):
        return error
    extra = collect_diagnostics(partial.spec, partial.doc, broken=partial.broken)
    seen = {(d.span.file, d.span.line, d.span.col, d.message) for d in error.diagnostics}
    extra = [d for d in extra if (d.span.file, d.span.line, d.span.col, d.message) not in seen]
    return SpecError([*error.diagnostics, *extra], error.sources) if extra else error


def check_spec(spec: ir.Spec, doc: Document) -> None:
    """Raise SpecError with every semantic problem of `spec` (no-op when there is none); a
    valid spec's warnings are issued as `SpecWarning`s (the CLI prints them like errors)."""
    import warnings

    diags = collect_diagnostics(spec, doc, include_warnings=True)
    errors = [d for d in diags if d.severity != "warning"]
    if errors:
        sources = {doc.file: doc.text}
        sources.update(_extra_sources(errors, doc))
        raise SpecError(errors, sources)
    for d in diags:
        warnings.warn(SpecWarning(d, doc.text if d.span.file == doc.file else None), stacklevel=2)


# ---------------------------------------------------------------------------------------------
# Context


@dataclass
class _Ctx:
    spec: ir.Spec
    doc: Document
    diags: list[Diagnostic] = field(default_factory=list)
    # (namespace, name) pairs that a did-you-mean hint proposed: not reported as unused, since
    # the real problem is the misspelled reference.
    suggested: set[tuple[str, str]] = field(default_factory=set)
    # Sources of other files whose diagnostics we forward (a referenced optimizer spec).
    other_sources: dict[str, str] = field(default_factory=dict)
    broken: dict[str, set[str]] = field(default_factory=dict)
    _used: dict[str, set[str]] | None = None

    def is_broken(self, section: str, name: str | None = None) -> bool:
        return section in self.broken and (name is None or name in self.broken[section])

    @property
    def used(self) -> dict[str, set[str]]:
        """Names referenced from somewhere, per namespace (level, memory, cms, block)."""
        if self._used is None:
            spec = self.spec
            used: dict[str, set[str]] = {"level": set(), "memory": set(), "cms": set(), "block": set()}
            if spec.model is not None:
                used["block"].update(spec.model.pattern)
            for _, _, layer in _layers(spec):
                used["memory"].update(ref for _, ref in _memory_refs(layer))
                if isinstance(layer, ir.CMSLayer):
                    used["cms"].add(layer.cms)
            used["level"].update(m.level for m in spec.memories.values()
                                 if isinstance(m, ir.ParametricMemory) and m.level)
            used["level"].update(st.level for c in spec.cms.values() for st in c.stages)
            self._used = used
        return self._used

    def add(self, path: Path, message: str, hint: str | None, code: Code, *, key: bool = False,
            severity: str = "error") -> None:
        self.diags.append(Diagnostic(self.doc.position(path, key=key), message, hint, code=code,
                                     severity=severity))

    def given(self, path: Path) -> bool:
        """Was this field written in the source (as opposed to filled in by a default)?"""
        return self.doc.find(path, _ABSENT) is not _ABSENT

    @property
    def shape(self) -> DataShape:
        return DataShape.of(self.spec)


def _extra_sources(diags: list[Diagnostic], doc: Document) -> dict[str, str]:
    """Source text of other files named by diagnostics (so they render with their lines)."""
    out: dict[str, str] = {}
    for d in diags:
        f = d.span.file
        if f != doc.file and f not in out:
            try:
                out[f] = FsPath(f).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                pass
    return out


def _names(items: list[str]) -> str:
    return ", ".join(repr(n) for n in items) if items else "(none)"


_PLURAL = {"level": "levels", "memory": "memories", "cms": "cms", "block": "blocks"}


def _unknown_ref_hint(ctx: _Ctx, ns: str, name: str, defined: list[str], extra: list[str] | None = None) -> str:
    """did-you-mean plus what exists, and remember the suggestion (see `_Ctx.suggested`)."""
    candidates = defined + (extra or [])
    dym = did_you_mean(name, candidates)
    if dym:
        ctx.suggested.add((ns, dym.split("'")[1]))
    else:
        # Not spelled alike, but if exactly one definition is never referenced, that is almost
        # certainly the one meant (a renamed entry).
        unused = [n for n in defined if n not in ctx.used[ns]]
        if len(unused) == 1:
            dym = f"did you mean '{unused[0]}' (defined but never used)?"
            ctx.suggested.add((ns, unused[0]))
    listing = f"defined {_PLURAL[ns]}: {_names(defined)}"
    if extra:
        listing += f"; built-in: {_names(extra)}"
    return f"{dym} {listing}" if dym else listing


# ---------------------------------------------------------------------------------------------
# Walking the layers


def _layers(spec: ir.Spec) -> Iterator[tuple[str, int, Any]]:
    for bname, block in spec.blocks.items():
        for i, layer in enumerate(block.layers):
            yield bname, i, layer


def _memory_refs(layer: Any) -> list[tuple[str, str]]:
    """(field, memory name) pairs a layer references."""
    refs: list[tuple[str, str]] = []
    if isinstance(layer, (ir.MemoryLayer, ir.MALLayer, ir.MAGLayer, ir.SelfModifyingLayer)):
        refs.append(("memory", layer.memory))
    if isinstance(layer, (ir.MALLayer, ir.MAGLayer)):
        refs.append(("attention", layer.attention))
    if isinstance(layer, ir.SelfModifyingLayer):
        refs.append(("projections", layer.projections))
    return refs


# ---------------------------------------------------------------------------------------------
# Checks


def _check_header(ctx: _Ctx) -> None:
    spec = ctx.spec
    if spec.nestdsl != ir.SPEC_VERSION:
        ctx.add(("nestdsl",), f"unsupported spec language version {spec.nestdsl}",
                f"this nestdsl reads version {ir.SPEC_VERSION}; write `nestdsl: {ir.SPEC_VERSION}`", Code.VERSION)
    if spec.model is None and spec.optimizer is None and not ctx.is_broken("optimizer"):
        ctx.add((), "the spec has neither a `model` nor an `optimizer` section",
                "a spec describes a model (`model:` with blocks) or an outer optimizer (`optimizer:`), or both",
                Code.MISSING)
    if spec.model is None:
        # Architecture sections without a model: nothing would ever use them.
        for section in ("levels", "memories", "cms", "blocks"):
            if getattr(spec, section):
                ctx.add((section,), f"'{section}' is given but the spec has no `model` section",
                        "add `model: {width: 64, depth: 2, pattern: [<block>]}` or remove this section",
                        Code.MISSING, key=True)
                break


def _check_level_names(ctx: _Ctx) -> None:
    for name in ctx.spec.levels:
        if name in ir.BUILTIN_LEVELS:
            ctx.add(("levels", name), f"level '{name}' redefines a built-in level",
                    f"'token' (1 token) and 'step' (1 step) are built in; pick another name such as '{name}s_2'",
                    Code.DUPLICATE, key=True)


def _check_references(ctx: _Ctx) -> None:
    spec = ctx.spec
    levels = list(spec.levels)
    builtin = list(ir.BUILTIN_LEVELS)
    memories, cms, blocks = list(spec.memories), list(spec.cms), list(spec.blocks)
    for mname, mem in spec.memories.items():
        if (isinstance(mem, ir.ParametricMemory) and mem.level is not None
                and mem.level not in spec.levels and mem.level not in ir.BUILTIN_LEVELS
                and not ctx.is_broken("levels", mem.level)):
            ctx.add(("memories", mname, "level"), f"unknown level '{mem.level}' in memory '{mname}'",
                    _unknown_ref_hint(ctx, "level", mem.level, levels, builtin), Code.UNKNOWN_REF)
    for cname, c in spec.cms.items():
        for i, stage in enumerate(c.stages):
            if (stage.level not in spec.levels and stage.level not in ir.BUILTIN_LEVELS
                    and not ctx.is_broken("levels", stage.level)):
                ctx.add(("cms", cname, "stages", i, "level"),
                        f"unknown level '{stage.level}' in cms '{cname}' stage {i + 1}",
                        _unknown_ref_hint(ctx, "level", stage.level, levels, builtin), Code.UNKNOWN_REF)
    for bname, i, layer in _layers(spec):
        for fld, ref in _memory_refs(layer):
            if ref not in spec.memories and not ctx.is_broken("memories", ref):
                ctx.add(("blocks", bname, "layers", i, fld),
                        f"unknown memory '{ref}' in block '{bname}' layer {i + 1} ({fld})",
                        _unknown_ref_hint(ctx, "memory", ref, memories), Code.UNKNOWN_REF)
        if isinstance(layer, ir.CMSLayer) and layer.cms not in spec.cms and not ctx.is_broken("cms", layer.cms):
            ctx.add(("blocks", bname, "layers", i, "cms"),
                    f"unknown cms '{layer.cms}' in block '{bname}' layer {i + 1}",
                    _unknown_ref_hint(ctx, "cms", layer.cms, cms), Code.UNKNOWN_REF)
    if spec.model is not None:
        for i, bname in enumerate(spec.model.pattern):
            if bname not in spec.blocks and not ctx.is_broken("blocks", bname):
                ctx.add(("model", "pattern", i), f"unknown block '{bname}' in model.pattern",
                        _unknown_ref_hint(ctx, "block", bname, blocks), Code.UNKNOWN_REF)


def _check_memories(ctx: _Ctx) -> None:
    """What a memory's fields mean together. Which field a kind reads is the IR's (one model per
    kind, `ir.MISPLACED`); the rules here relate fields a kind does read."""
    objectives = objective_names()
    width = ctx.spec.model.width if ctx.spec.model is not None else None
    for mname, mem in ctx.spec.memories.items():
        base: Path = ("memories", mname)
        if mem.heads is not None and width is not None and width % mem.heads != 0:
            ctx.add(base + ("heads",), f"memory '{mname}': {mem.heads} heads do not divide model width {width}",
                    f"heads split the width; use a divisor of {width}: {_divisors(width)}", Code.HEADS)
        if isinstance(mem, ir.ParametricMemory):
            _check_parametric_memory(ctx, base, mname, mem, objectives)


def _check_parametric_memory(ctx: _Ctx, base: Path, mname: str, mem: ir.ParametricMemory,
                             objectives: list[str]) -> None:
    example = "e.g. `objective: l2` (regression, DeltaNet/Titans) or `objective: dot` (linear attention)"
    if mem.objective is None:
        ctx.add(base, f"{mem.kind} memory '{mname}' needs an `objective`", example, Code.MISSING, key=True)
    elif mem.objective not in objectives:
        dym = did_you_mean(mem.objective, objectives)
        allowed = f"registered objectives: {_names(objectives)}"
        ctx.add(base + ("objective",), f"unknown objective '{mem.objective}' in memory '{mname}'",
                f"{dym} {allowed}" if dym else allowed, Code.UNKNOWN_REF)
    if mem.rule is None:
        ctx.add(base, f"{mem.kind} memory '{mname}' needs an update `rule`",
                "e.g. `rule: {kind: gd, lr: 1.0}`; add `retention:`/`momentum:` for decay and momentum",
                Code.MISSING, key=True)
    if isinstance(mem, ir.MLPMemory):
        if mem.init == "zeros":
            ctx.add(base + ("init",), f"mlp memory '{mname}' cannot start from zeros",
                    "an all-zero MLP has zero inner gradients in every layer but the last; "
                    "remove `init` (mlp memories learn their initial state)", Code.COMBINATION)
        if mem.read_norm is not None and mem.residual is False:
            ctx.add(base + ("read_norm",), f"`read_norm` on memory '{mname}' without a residual",
                    "`read_norm` normalises the branch M(q) - q of a residual mlp memory "
                    "(x + W1 s(W2 x)); use `kind: mlp` with `residual: true`", Code.COMBINATION,
                    key=True)
    elif not mem.norm:      # a linear memory
        if mem.residual:
            ctx.add(base + ("residual",), f"`residual` on linear memory '{mname}' without `norm`",
                    "a linear memory's residual belongs to TTT-Linear's x + LN(W x): add "
                    "`norm: true`, or remove `residual`", Code.COMBINATION, key=True)
        if mem.rule is not None and mem.rule.normalized_lr:
            ctx.add(base + ("rule", "normalized_lr"),
                    f"`normalized_lr` on linear memory '{mname}' without `norm`",
                    "the per-layer normalised step divides each MLP weight's step by its input's "
                    "|a|^2; for a bare matrix use unit-norm keys or `erase: normalized` (dgd)",
                    Code.COMBINATION, key=True)
    if mem.rule is not None:
        _check_rule(ctx, base + ("rule",), mname, mem.rule)
        if mem.rule.clip is not None and mem.objective not in (None, "l2"):
            ctx.add(base + ("rule", "clip"),
                    f"memory '{mname}': `clip` soft-clips the l2 error, but the objective is "
                    f"'{mem.objective}'", "use `objective: l2`, or remove `clip`", Code.COMBINATION)
        if mem.rule.erase is not None and mem.rule.kind != "dgd":
            ctx.add(base + ("rule", "erase"),
                    f"memory '{mname}': `erase` is the erase rate of dgd, but the rule is "
                    f"'{mem.rule.kind}'", "use `kind: dgd`, or remove `erase`", Code.COMBINATION)


# Beyond this inner step an unclipped mlp memory's state blew up within the first step
# (titans-lmm-tiny without `clip`: 0.75 -> inf in 7 chunks; a user's Titans with the defaults,
# lr scale 1 and no clip: non-finite at step 1; with clip 1 only: state norm 1e7).
_STABLE_INNER_LR = 0.1


def _check_memory_stability(ctx: _Ctx) -> None:
    """Warn when a parametric mlp memory regresses (l2) with an unclipped or unscaled inner
    step: the library defaults (rule.lr 1, no clip) are not the ones the presets train with."""
    for mname, mem in ctx.spec.memories.items():
        if not isinstance(mem, ir.MLPMemory) or mem.rule is None or mem.objective not in (None, "l2"):
            continue
        rule = mem.rule
        base: Path = ("memories", mname, "rule")
        lr = rule.lr
        step = lr.scale if isinstance(lr, ir.LearnedGate) else float(lr)
        unclipped = rule.clip is None and not mem.norm          # `norm` bounds the predictions
        unscaled = step > _STABLE_INNER_LR and not (rule.lr_per_dim or rule.normalized_lr)
        if not (unclipped or unscaled):
            continue
        fix: list[str] = []
        if unscaled:
            fix.append(f"rule.lr.scale: {_STABLE_INNER_LR:g}" if isinstance(lr, ir.LearnedGate)
                       else f"rule.lr: {_STABLE_INNER_LR:g}")
        if unclipped:
            fix.append("rule.clip: 1.0")
        what = " and ".join(
            ([f"inner step {'rule.lr.scale' if isinstance(lr, ir.LearnedGate) else 'rule.lr'} = "
              f"{step:g}"] if unscaled else []) + (["no rule.clip"] if unclipped else []))
        path = base + (("lr",) if unscaled and ctx.given(base + ("lr",)) else ())
        ctx.add(path if ctx.given(path) else ("memories", mname),
                f"mlp memory '{mname}' may diverge at the first step: {what}",
                f"set {' and '.join(fix)} (the Titans presets' `rule: {{lr: {{learned: sigmoid, "
                f"scale: 0.1}}, clip: 1.0}}`, specs/titans-lmm.yaml); `norm: true` bounds the "
                f"predictions instead of the clip, `rule.lr_per_dim: true` the step instead of "
                f"the scale", Code.STABILITY, severity="warning")


def _divisors(n: int) -> str:
    divs = [d for d in range(1, n + 1) if n % d == 0]
    if len(divs) > 8:
        divs = divs[:8]
        return ", ".join(map(str, divs)) + ", ..."
    return ", ".join(map(str, divs))


def _check_rule(ctx: _Ctx, base: Path, mname: str, rule: ir.Rule) -> None:
    # Gate ranges: lr > 0; retention alpha in (0, 1] (above 1 the state explodes); momentum
    # beta in [0, 1). A learned gate must be able to reach its `init` value.
    bounds: dict[str, tuple[str, Callable[[float], bool]]] = {
        "lr": ("> 0", lambda v: v > 0),
        "retention": ("in (0, 1]", lambda v: 0 < v <= 1),
        "momentum": ("in [0, 1)", lambda v: 0 <= v < 1),
    }
    for name, (text, ok) in bounds.items():
        gate = getattr(rule, name)
        path = base + (name,)
        if gate is None:
            continue
        if isinstance(gate, (int, float)):
            if not ok(float(gate)):
                ctx.add(path, f"memory '{mname}': rule {name} must be {text}, got {gate}",
                        _GATE_HINTS[name], Code.RANGE)
            continue
        if name in ("retention", "momentum"):
            if gate.learned == "softplus":
                ctx.add(path + ("learned",), f"memory '{mname}': a softplus {name} gate is unbounded",
                        f"{name} must stay {text}; use `learned: sigmoid`", Code.RANGE)
            elif gate.scale > 1:
                ctx.add(path + ("scale",), f"memory '{mname}': {name} gate scale {gate.scale} lets it exceed 1",
                        f"{name} must stay {text}; use a scale <= 1", Code.RANGE)
        if gate.init is not None:
            if gate.learned == "sigmoid" and not 0 < gate.init < gate.scale:
                ctx.add(path + ("init",), f"memory '{mname}': {name} init {gate.init} is out of reach of the gate",
                        f"a sigmoid gate with scale {gate.scale} takes values strictly between 0 and {gate.scale}",
                        Code.RANGE)
            elif gate.learned == "softplus" and gate.init <= 0:
                ctx.add(path + ("init",), f"memory '{mname}': {name} init {gate.init} is out of reach of the gate",
                        "a softplus gate takes positive values only", Code.RANGE)


_GATE_HINTS = {
    "lr": "the inner learning rate eta is a positive step size",
    "retention": "retention alpha keeps a fraction of the old state: 1 = no decay, 0.99 = slow decay",
    "momentum": "momentum beta is a decay in [0, 1): 0 = no momentum, 0.9 typical",
}


def _check_model(ctx: _Ctx) -> None:
    model = ctx.spec.model
    if model is None:
        return
    if model.width % model.heads != 0:
        ctx.add(("model", "heads"), f"{model.heads} heads do not divide model width {model.width}",
                f"heads split the width; use a divisor of {model.width}: {_divisors(model.width)}", Code.HEADS)


def _check_layers(ctx: _Ctx) -> None:
    mems = ctx.spec.memories
    for bname, i, layer in _layers(ctx.spec):
        base: Path = ("blocks", bname, "layers", i)
        where = f"block '{bname}' layer {i + 1}"
        if isinstance(layer, (ir.MALLayer, ir.MAGLayer)):
            att = mems.get(layer.attention)
            if att is not None and not isinstance(att, ir.AttentionMemory):
                ctx.add(base + ("attention",),
                        f"{where} ({layer.type}): '{layer.attention}' is a {att.kind} memory, not attention",
                        f"`attention` must name a memory with `kind: attention` (the sliding-window branch of {layer.type.upper()})",
                        Code.COMBINATION)
            mem = mems.get(layer.memory)
            if mem is not None and not isinstance(mem, ir.ParametricMemory):
                ctx.add(base + ("memory",),
                        f"{where} ({layer.type}): `memory` '{layer.memory}' is an attention memory",
                        "`memory` must name a parametric (linear or mlp) memory, the long-term memory of Titans",
                        Code.COMBINATION)
        if isinstance(layer, ir.SelfModifyingLayer):
            mem = mems.get(layer.memory)
            if mem is not None and not isinstance(mem, ir.MLPMemory):
                ctx.add(base + ("memory",),
                        f"{where} (self_modifying): memory '{layer.memory}' is {mem.kind}, not mlp",
                        "Hope's self-modifying Titans uses an mlp memory (residual x + W1 s(W2 x)); set `kind: mlp`",
                        Code.COMBINATION)
            proj = mems.get(layer.projections)
            if proj is not None and not isinstance(proj, ir.MLPMemory):
                ctx.add(base + ("projections",),
                        f"{where} (self_modifying): projections '{layer.projections}' is {'an' if isinstance(proj, ir.AttentionMemory) else 'a'} "
                        f"{proj.kind} memory, not mlp",
                        "Hope's k/v/eta/alpha memories are residual MLPs x + W1 s(W2 x) (NL Eq. 89); set `kind: mlp`",
                        Code.COMBINATION)
            # an unset `read` resolves to PROJECTION_READ (spec/resolve.py)
            if isinstance(proj, ir.ParametricMemory) and "read" in proj.model_fields_set \
                    and proj.read != PROJECTION_READ:
                ctx.add(("memories", layer.projections, "read"),
                        f"projections '{layer.projections}' of {where} have `read: {proj.read}`; the generated "
                        "k, v, eta, alpha read the chunk-start state",
                        "set `read: chunk` (NL paper Eq. 90: the elements of a chunk are generated from the "
                        "state at the end of the previous chunk)", Code.COMBINATION)
            if isinstance(mem, ir.MLPMemory) and isinstance(proj, ir.MLPMemory):
                _check_self_modifying_shapes(ctx, base, where, layer, mem, proj)
            if layer.projections == layer.memory:
                ctx.add(base + ("projections",),
                        f"{where}: a memory cannot generate its own keys ('{layer.memory}' is both "
                        "`memory` and `projections`)",
                        "declare a separate memory for the k/v/eta/alpha projections (Hope uses two: the main "
                        "memory and the projection memories)", Code.CYCLE)
            seen: dict[str, int] = {}
            for j, a in enumerate(layer.adaptive):
                if a in seen:
                    ctx.add(base + ("adaptive", j), f"'{a}' is listed twice in `adaptive`",
                            f"each projection appears once (first at position {seen[a] + 1}); remove this one",
                            Code.DUPLICATE)
                seen.setdefault(a, j)


def _check_self_modifying_shapes(ctx: _Ctx, base: Path, where: str, layer: ir.SelfModifyingLayer,
                                 mem: ir.MLPMemory, proj: ir.MLPMemory) -> None:
    """Heads and chunk sizes the main memory and its projections must share (lower/hope.py)."""
    model = ctx.spec.model
    heads = mem.heads or (model.heads if model else None)
    if proj.heads is not None and heads is not None and proj.heads != heads:
        ctx.add(("memories", layer.projections, "heads"),
                f"projections '{layer.projections}' have {proj.heads} heads but the main memory "
                f"'{layer.memory}' of {where} has {heads}",
                "all memories of a self_modifying layer share the keys, hence the heads", Code.HEADS)
    periods = []
    for m in (mem, proj):
        try:
            p = ctx.spec.level_period(m.level)
        except KeyError:
            return                                   # reported as an unknown level
        if p.unit != "tokens":
            return                                   # reported by the level rules
        periods.append(p.every)
    c_mem, c_other = periods
    if max(c_mem, c_other) % min(c_mem, c_other):
        ctx.add(base, f"{where} (self_modifying): chunk sizes C_mem = {c_mem} ('{layer.memory}') and "
                f"C_other = {c_other} ('{layer.projections}') do not nest",
                "one must divide the other (e.g. C_mem = 4·C_other), so both memories advance together "
                "chunk by chunk", Code.PERIOD)


def _check_cycles(ctx: _Ctx) -> None:
    """Cycles in the reference graph among named things.

    Edges: a block reads its memories and CMS chains; projections *generate* the main memory's
    inputs; the model uses blocks. Only `generates` can currently close a loop (a self-loop is
    reported by `_check_layers` with a dedicated message), but the detector is generic so new
    kinds of reference (blocks or CMS stages referring to each other) are covered too.
    """
    graph: dict[str, list[tuple[str, Path]]] = {}

    def edge(a: str, b: str, path: Path) -> None:
        graph.setdefault(a, []).append((b, path))
        graph.setdefault(b, [])

    if ctx.spec.model is not None:
        for i, bname in enumerate(ctx.spec.model.pattern):
            edge("model", f"block '{bname}'", ("model", "pattern", i))
    for bname, i, layer in _layers(ctx.spec):
        base: Path = ("blocks", bname, "layers", i)
        for fld, ref in _memory_refs(layer):
            edge(f"block '{bname}'", f"memory '{ref}'", base + (fld,))
        if isinstance(layer, ir.CMSLayer):
            edge(f"block '{bname}'", f"cms '{layer.cms}'", base + ("cms",))
        if isinstance(layer, ir.SelfModifyingLayer) and layer.projections != layer.memory:
            edge(f"memory '{layer.projections}'", f"memory '{layer.memory}'", base + ("projections",))
    for cycle, path in find_cycles(graph):
        names = [n.split("'")[1] for n in cycle]
        ctx.add(path, "reference cycle: " + " -> ".join(names + [names[0]]),
                "projections generate the keys/values of another memory; a memory cannot (through other "
                "memories) generate its own inputs. Use a memory outside the loop as `projections`",
                Code.CYCLE)


def find_cycles(graph: dict[str, list[tuple[str, Path]]]) -> list[tuple[list[str], Path]]:
    """Every elementary cycle found by DFS back edges, once each (as a node list starting at its
    smallest node), with the position of the edge that leaves that node."""
    found: dict[tuple[str, ...], Path] = {}
    color: dict[str, int] = {}  # 0/absent: new, 1: on the stack, 2: done
    stack: list[tuple[str, Path | None]] = []

    def visit(node: str) -> None:
        # Iterative DFS would be overkill: reference graphs are tiny (tens of nodes).
        color[node] = 1
        for nxt, path in graph.get(node, []):
            if color.get(nxt, 0) == 0:
                stack.append((node, path))
                visit(nxt)
                stack.pop()
            elif color.get(nxt) == 1:
                nodes = [n for n, _ in stack] + [node]
                paths = [p for _, p in stack] + [path]
                start = nodes.index(nxt)
                cyc, cpaths = nodes[start:], paths[start:]
                k = cyc.index(min(cyc))
                key = tuple(cyc[k:] + cyc[:k])
                if key not in found:
                    found[key] = cpaths[k] or path
        color[node] = 2

    for n in list(graph):
        if color.get(n, 0) == 0:
            visit(n)
    return [(list(k), p) for k, p in found.items()]


def _check_periods(ctx: _Ctx) -> None:
    if ctx.is_broken("data"):
        return  # the data shape decides every period rule; don't guess it from defaults
    spec, shape = ctx.spec, ctx.shape
    for mname, mem in spec.memories.items():
        if not isinstance(mem, ir.ParametricMemory) or mem.level is None:
            continue
        if mem.level not in spec.levels and mem.level not in ir.BUILTIN_LEVELS:
            continue  # reported as an unknown reference
        period = spec.level_period(mem.level)
        path: Path = ("memories", mname, "level")
        if period.unit == "steps":
            ctx.add(path, f"memory '{mname}' uses level '{mem.level}' ({period}), a period in optimizer steps",
                    "memories update inside the sequence, so their level (chunk size C) must be in tokens, "
                    "e.g. '16 tokens'; per-step updates belong in a CMS stage", Code.PERIOD)
        elif period.every >= shape.seq_len:
            ctx.add(path, f"memory '{mname}': chunk size {period} (level '{mem.level}') is not smaller than "
                    f"seq_len {shape.seq_len}",
                    f"a memory's level is its chunk size C and must be < seq_len ({shape.describe()}) or the "
                    "memory never updates inside a sequence", Code.PERIOD)
    reported: set[str] = set()
    for cname, c in spec.cms.items():
        for i, stage in enumerate(c.stages):
            if stage.level not in spec.levels and stage.level not in ir.BUILTIN_LEVELS:
                continue
            cls = classify(spec.level_period(stage.level), shape)
            if cls.ok:
                if cls.kind == LevelKind.PERSISTENT:
                    _persistent_only(ctx, cname, i, stage, cls)
                continue
            if stage.level in reported:
                continue
            reported.add(stage.level)
            _period_error(ctx, cname, i, stage.level, cls, shape)
        if c.mode == "nested":
            _check_nested(ctx, cname, c, shape)
    _check_sweep_segments(ctx, shape)


def _check_sweep_segments(ctx: _Ctx, shape: DataShape) -> None:
    """In-context CMS stages with the `task` signal train through the task sweep, which runs the
    model in segments of gcd(their periods) tokens (lower/sweep.py); every memory of the model
    continues its stream across those segments, which is exact only at its chunk boundaries."""
    spec = ctx.spec
    used_cms = {layer.cms for _, _, layer in _layers(spec) if isinstance(layer, ir.CMSLayer)}
    task = []
    for cname in sorted(used_cms & set(spec.cms)):
        for i, stage in enumerate(spec.cms[cname].stages):
            if stage.signal != "task" or (stage.level not in spec.levels
                                          and stage.level not in ir.BUILTIN_LEVELS):
                continue
            c = classify(spec.level_period(stage.level), shape)
            if c.kind == LevelKind.IN_CONTEXT and c.tokens:
                task.append((cname, i, stage, c.tokens))
    if not task:
        return
    segment = math.gcd(*(t for *_, t in task))
    for bname, i, layer in _layers(spec):
        for role, name in _memory_refs(layer):
            mem = spec.memories.get(name)
            if not isinstance(mem, ir.ParametricMemory) or mem.level is None:
                continue
            if mem.level not in spec.levels and mem.level not in ir.BUILTIN_LEVELS:
                continue
            period = spec.level_period(mem.level)
            if period.unit == "tokens" and segment % period.every:
                cname, j, stage, _ = task[0]
                ctx.add(("memories", name, "level"),
                        f"memory '{name}' (chunk size {period.every}, {role} of block '{bname}' "
                        f"layer {i + 1}) cannot stream through the task sweep's {segment}-token "
                        f"segments (the gcd of the `task` CMS periods, e.g. cms '{cname}' stage "
                        f"{j + 1}, level '{stage.level}')",
                        f"make every task-signal CMS period a multiple of {period.every} tokens, or use "
                        "`signal: local` for the faster stages", Code.PERIOD)


def _period_error(ctx: _Ctx, cname: str, i: int, level: str, cls: LevelClass, shape: DataShape) -> None:
    # Point at the period itself when the user defined it (that is what needs to change).
    user_defined = level in ctx.spec.levels
    path: Path = ("levels", level, "every") if user_defined else ("cms", cname, "stages", i, "level")
    period = ctx.spec.level_period(level)
    used = f"used by cms '{cname}' stage {i + 1}"
    tps = shape.tokens_per_step
    if cls.kind == LevelKind.NON_DIVIDING:
        below, above = divisors_near(period.every, shape.seq_len)
        near = " or ".join(str(d) for d in (below, above) if d is not None)
        ctx.add(path, f"level '{level}' period {period} does not divide seq_len {shape.seq_len} ({used})",
                f"an in-context level fires every C tokens and C must divide seq_len ({shape.describe()}); "
                f"nearest valid: {near} tokens", Code.PERIOD)
    else:
        ctx.add(path, f"level '{level}' period {period} is between in-context and persistent ({used})",
                f"in-context periods are < seq_len ({shape.seq_len} tokens) and divide it; persistent periods are "
                f"in steps or a multiple of tokens per step ({tps} = batch {shape.batch} x seq_len {shape.seq_len}), "
                f"e.g. '{tps} tokens' or '1 step'", Code.PERIOD)


def _persistent_only(ctx: _Ctx, cname: str, i: int, stage: ir.CMSStage, cls: LevelClass) -> None:
    # signal/scope/lr drive in-context updates; a persistent stage is updated by the outer
    # optimizer, so setting them is a misunderstanding worth pointing out.
    for f in ("signal", "scope", "lr"):
        if ctx.given(("cms", cname, "stages", i, f)):
            ctx.add(("cms", cname, "stages", i, f),
                    f"`{f}` on persistent cms stage {i + 1} of '{cname}' (level '{stage.level}', every {cls.every_k} step(s))",
                    f"`{f}` applies to in-context stages (period < seq_len); a persistent stage is updated by the "
                    "outer optimizer. Remove it", Code.COMBINATION, key=True)


def _check_nested(ctx: _Ctx, cname: str, c: ir.CMS, shape: DataShape) -> None:
    """`nested` stages reset the faster ones when a slower one fires: periods must nest."""

    def tokens(stage: ir.CMSStage) -> int | None:
        if stage.level not in ctx.spec.levels and stage.level not in ir.BUILTIN_LEVELS:
            return None
        p = ctx.spec.level_period(stage.level)
        return p.every if p.unit == "tokens" else p.every * shape.tokens_per_step

    for i in range(1, len(c.stages)):
        a, b = tokens(c.stages[i - 1]), tokens(c.stages[i])
        if a is None or b is None:
            continue
        if b < a or b % a != 0:
            sa, sb = c.stages[i - 1], c.stages[i]
            pa, pb = ctx.spec.level_period(sa.level), ctx.spec.level_period(sb.level)
            relation = "is faster than" if b < a else "is not a multiple of"
            ctx.add(("cms", cname, "stages", i, "level"),
                    f"nested cms '{cname}': stage {i + 1} (level '{sb.level}', {pb}) {relation} "
                    f"stage {i} (level '{sa.level}', {pa})",
                    "in `mode: nested` stages go from fastest to slowest and each period is a multiple of the "
                    "previous one (a slower stage resets the faster ones when it fires)", Code.PERIOD)


def _check_unused(ctx: _Ctx) -> None:
    spec = ctx.spec
    if spec.model is None:
        return  # reported once by _check_header
    # Skip a namespace when something that could reference it was rejected by validation.
    blocked = {
        "level": ctx.is_broken("memories") or ctx.is_broken("cms"),
        "memory": ctx.is_broken("blocks"),
        "cms": ctx.is_broken("blocks"),
        "block": False,
    }
    for ns, section, defined, how in (
        ("block", "blocks", spec.blocks, "list it in model.pattern"),
        ("memory", "memories", spec.memories, "reference it from a block layer"),
        ("cms", "cms", spec.cms, "reference it from a block layer `{type: cms, cms: ...}`"),
        ("level", "levels", spec.levels, "reference it from a memory or cms stage `level:`"),
    ):
        if blocked[ns]:
            continue
        for name in defined:
            if name not in ctx.used[ns] and (ns, name) not in ctx.suggested:
                ctx.add((section, name), f"{ns} '{name}' is never used", f"remove it or {how}",
                        Code.UNUSED, key=True)


def _check_data(ctx: _Ctx) -> None:
    data, model = ctx.spec.data, ctx.spec.model
    if data is None:
        return
    tasks: list[tuple[Path, Any]] = [(("data",), data)]
    if isinstance(data, ir.ContinualData):
        tasks = [(("data", "tasks", i), t) for i, t in enumerate(data.tasks)]
        for i, t in enumerate(data.tasks):
            # The model trains on one sequence shape; a task with another would change the
            # level classification halfway through the run.
            for f in ("seq_len", "batch"):
                if ctx.given(("data", "tasks", i, f)) and getattr(t, f) != getattr(data, f):
                    ctx.add(("data", "tasks", i, f),
                            f"continual task {i + 1} sets {f} {getattr(t, f)}, but data.{f} is {getattr(data, f)}",
                            f"all tasks share the run's {f}; set it once on the `data` section", Code.DATA)
    for path, t in tasks:
        seq_len = data.seq_len  # the run's shape, also for continual sub-tasks
        # Point at seq_len when it was written, else at the task's section key.
        seq_path: Path = ("data", "seq_len") if ctx.given(("data", "seq_len")) else path
        if isinstance(t, ir.TextData):
            if not t.path.strip():
                ctx.add(path + ("path",), "text data needs a non-empty `path`",
                        "a text file or a folder of text files", Code.DATA)
            need = 256 if t.tokenizer == "bytes" else t.vocab_size
            what = "byte-level text (256 symbols)" if t.tokenizer == "bytes" else f"a BPE vocabulary of {need}"
        elif isinstance(t, ir.MQARData):
            need, what = 256, "mqar (byte-level ids, 256 symbols)"
            q = t.num_queries if t.num_queries is not None else t.num_pairs
            if t.num_pairs > 127:
                ctx.add(path + ("num_pairs",), f"mqar: num_pairs {t.num_pairs} exceeds the 127 distinct keys",
                        "keys and values split the 256 byte ids (127 each); use num_pairs <= 127", Code.DATA)
            if seq_len + 1 < 2 * t.num_pairs + 2 * q:
                ctx.add(seq_path, f"mqar: seq_len {seq_len} is too short for {t.num_pairs} pairs and {q} queries",
                        f"each pair and each query takes 2 tokens: need seq_len >= {2 * t.num_pairs + 2 * q - 1}",
                        Code.DATA, key=True)
        elif isinstance(t, ir.NIAHData):
            need, what = 256, "niah (byte-level text, 256 symbols)"
            # Mirrors nestdsl.runtime.tasks.niah.min_seq_len (not imported: keeps check light).
            lo = {1: 64, 2: 96, 3: 128}[int(t.variant)]
            if seq_len < lo:
                ctx.add(seq_path, f"niah variant {t.variant} needs seq_len >= {lo}, got {seq_len}",
                        "the needle, query and answer need room in the haystack", Code.DATA, key=True)
        elif isinstance(t, ir.CopyData):
            need, what = 256, "copy (byte-level ids, 256 symbols)"
            if seq_len < 2 * t.length:
                ctx.add(seq_path, f"copy: seq_len {seq_len} is too short to copy length {t.length}",
                        f"the string, a separator and the copy need seq_len >= {2 * t.length}", Code.DATA, key=True)
        else:
            continue
        if model is not None and need is not None and model.vocab < need:
            ctx.add(("model", "vocab"), f"model.vocab {model.vocab} is smaller than the data's vocabulary ({need})",
                    f"{what} needs vocab >= {need}", Code.DATA)


def _check_train(ctx: _Ctx) -> None:
    spec = ctx.spec
    if spec.train is not None and spec.optimizer is None and not ctx.is_broken("optimizer"):
        # No silent default: the outer optimizer is part of the experiment (docs/design.md §4).
        ctx.add(("train",), "`train` needs an outer `optimizer`",
                "add `optimizer: adamw` (a shipped optimizer spec), a path to an optimizer spec "
                "file or an inline `optimizer: {type: adamw, lr: 3e-3}`", Code.MISSING, key=True)
    if spec.train is not None and spec.train.warmup > spec.train.steps:
        ctx.add(("train", "warmup"), f"warmup {spec.train.warmup} is longer than the run ({spec.train.steps} steps)",
                "use warmup < train.steps", Code.RANGE)
    if spec.train is not None and spec.model is None:
        ctx.add(("train",), "`train` is given but the spec has no `model` section",
                "an optimizer-only spec is referenced from a model spec; train the model spec", Code.MISSING, key=True)


def _check_optimizer(ctx: _Ctx) -> None:
    opt = ctx.spec.optimizer
    if isinstance(opt, ir.Optimizer):
        # Which fields each type (and each group's type) reads is the models' business
        # (spec/optimizers.py): a field no type here reads never validates.
        seen: dict[str, int] = {}
        for i, g in enumerate(opt.groups):
            if g.params in seen:
                ctx.add(("optimizer", "groups", i, "params"),
                        f"optimizer parameter group '{g.params}' is given twice",
                        f"first at group {seen[g.params] + 1}; merge them", Code.DUPLICATE)
            seen.setdefault(g.params, i)
    elif isinstance(opt, str):
        _check_optimizer_ref(ctx)


def _check_optimizer_ref(ctx: _Ctx) -> None:
    from nestdsl.spec import parse_file, resolve_optimizer_path

    spec = ctx.spec
    path = resolve_optimizer_path(spec)
    if path is None:
        return
    if path.is_file():
        here = FsPath(spec.source_file).resolve() if spec.source_file else None
        chain = _ACTIVE_REFS + ([here] if here else [])
        target = path.resolve()
        if target in chain:
            # a.yaml -> b.yaml -> a.yaml: following it would recurse forever.
            loop = chain[chain.index(target):] + [target]
            ctx.add(("optimizer",), "optimizer reference cycle: " + " -> ".join(p.name for p in loop),
                    "an optimizer reference must name a file with an inline `optimizer:` mapping", Code.CYCLE)
            return
    if not path.is_file():
        _optimizer_not_found(ctx, str(spec.optimizer), path)
        return
    here = FsPath(spec.source_file).resolve() if spec.source_file else None
    if here is not None:
        _ACTIVE_REFS.append(here)
    try:
        opt_doc, opt_spec = parse_file(path)
    except SpecError as rejected:
        e = with_semantic_problems(rejected)
        # Say at the reference why this spec fails, then list the referenced file's errors.
        first = e.diagnostics[0].span if e.diagnostics else None
        where = f" (first at {first})" if first else ""
        ctx.add(("optimizer",), f"optimizer spec '{spec.optimizer}' is invalid",
                f"fix the errors reported in {path}{where}", Code.UNKNOWN_REF)
        ctx.diags.extend(e.diagnostics)
        return
    finally:
        if here is not None:
            _ACTIVE_REFS.pop()
    if opt_spec.outer_optimizer is None:
        ctx.add(("optimizer",), f"'{spec.optimizer}' has no inline `optimizer:` section",
                "an optimizer reference must name a file whose `optimizer:` is a mapping (no chained references)",
                Code.UNKNOWN_REF)
        return
    # The referenced file's own semantic problems (e.g. duplicate groups) count too.
    ctx.diags.extend(collect_diagnostics(opt_spec, opt_doc))
    spec._resolved_optimizer = opt_spec.outer_optimizer
    spec._optimizer_file = str(path)


def _optimizer_not_found(ctx: _Ctx, ref: str, path: FsPath) -> None:
    """`optimizer: adamx` (no such shipped name) or `optimizer: my/opt.yaml` (no such file)."""
    from nestdsl.spec.shipped import is_bare_name, optimizer_names

    names = list(optimizer_names())
    shipped = "shipped optimizer specs: " + ", ".join(names)
    if is_bare_name(ref):
        ctx.add(("optimizer",), f"unknown optimizer '{ref}': not a shipped optimizer spec nor a file",
                f"{choices_hint(ref, names)} (or give the path of an optimizer spec file, relative "
                "to this spec file)", Code.UNKNOWN_REF)
        return
    base = FsPath(ctx.spec.source_file).parent if ctx.spec.source_file else FsPath(".")
    stem = FsPath(ref).stem
    dym: str | None
    if stem in names:
        # `optim/adamw.yaml`, the reference presets used before the specs moved into the package
        dym = f"did you mean '{stem}' (the shipped optimizer spec, by name)?"
    else:
        # Spec files next to this one and one folder down (e.g. optim/*.yaml): enough for a
        # did-you-mean without walking a large tree.
        siblings = [str(p.relative_to(base)) for pat in ("*.y*ml", "*/*.y*ml") for p in base.glob(pat)]
        dym = did_you_mean(ref, siblings + names)
    hint = f"looked for {path}; a path is relative to this spec file; {shipped}"
    ctx.add(("optimizer",), f"optimizer spec '{ref}' not found", f"{dym} {hint}" if dym else hint,
            Code.UNKNOWN_REF)


# Spec files whose optimizer reference is being followed (innermost last): a referenced file that
# fails validation is partially checked, which follows its own reference, so loops must be cut.
_ACTIVE_REFS: list[FsPath] = []

def _check_cms_stages(ctx: _Ctx) -> None:
    """A `local` stage is an associative memory written by memory_scan's MLP, which is ungated."""
    for cname, cms in ctx.spec.cms.items():
        for i, stage in enumerate(cms.stages):
            if stage.gated and stage.signal == "local":
                ctx.add(("cms", cname, "stages", i, "gated"),
                        f"cms '{cname}' stage {i + 1}: a gated stage cannot use `signal: local` (the local "
                        "signal writes the stage as an ungated associative MLP memory)",
                        "use `signal: task`, or remove `gated`", Code.COMBINATION)


_CHECKS = (
    _check_header,
    _check_level_names,
    _check_references,
    _check_memories,
    _check_memory_stability,
    _check_model,
    _check_layers,
    _check_cycles,
    _check_periods,
    _check_cms_stages,
    _check_data,
    _check_train,
    _check_optimizer,
    _check_unused,  # last: uses the did-you-mean suggestions collected above
)
