"""The outer optimizer's own levels, for the level graph (pure Python: no torch import).

`describe_levels(spec)` lists the memories an optimizer spec keeps, fastest first, each as a
dict (arXiv App. B Eqs. 100–111, Eqs. 38–60, §7.2; docs/design.md §4):

    name       unique within the optimizer, e.g. "fast_momentum"
    state      the optimizer-state key(s) holding it (or "params" for the weights themselves)
    objective  inner objective: "dot", "l2", or "orthogonality" (Newton-Schulz, Eq. 43)
    memory     "elementwise", "linear" (a matrix-shaped memory, e.g. momentum) or "mlp"
    period     firing period in optimizer steps (int); unit is always "steps"
    reads      what it is written from ("grad", "grad_sum", "grad^2", "layer_inputs", a level)
    writes     what its output updates ("params" for the level that moves the weights)
    decay      forget gate (float) or None; lr: inner step size or None
    params     which parameter class it applies to ("all" or a ParamGroup class)
    inner_steps  (Newton-Schulz only) GD steps per firing
    doc        one line

Levels of optimizers routed by `groups` to another type are included with that `params`. Each
optimizer type's own levels are `levels()` on its spec model (nestdsl/spec/optimizers.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, cast

__all__ = ["describe_levels", "optimizer_spec"]


def optimizer_spec(spec: Any) -> Any:
    """The IR `Optimizer` of an optimizer spec file path, the name of a shipped optimizer spec
    (`"m3"`: `nestdsl/optim/specs/`, used when no such file exists), a loaded `ir.Spec` or an
    `Optimizer` node (returned as is)."""
    from nestdsl.pipeline import load_spec
    from nestdsl.spec import ir
    from nestdsl.spec.shipped import shipped_optimizer

    if isinstance(spec, (str, os.PathLike)):
        shipped = shipped_optimizer(str(spec)) if isinstance(spec, str) else None
        # any os.PathLike is read through pathlib.Path (spec/__init__.py: read_source)
        spec = load_spec(shipped if shipped is not None and not os.path.isfile(spec)
                         else cast(str | Path, spec))
    if isinstance(spec, ir.Spec):
        if spec.outer_optimizer is None:
            raise ValueError(f"{spec.source_file or spec.name}: has no `optimizer:` section")
        return spec.outer_optimizer
    if not isinstance(spec, ir.Optimizer):
        raise TypeError(f"expected an optimizer spec path, an ir.Spec or an ir.Optimizer, "
                        f"got {type(spec).__name__}")
    return spec


def describe_levels(spec: Any) -> list[dict[str, Any]]:
    """The optimizer spec's levels (see module doc). `spec`: as for `optimizer_spec`."""
    from nestdsl.spec.optimizers import group_optimizer

    spec = optimizer_spec(spec)
    out = [{**lvl, "params": "default" if spec.groups else "all"} for lvl in spec.levels()]
    seen = {spec.type}
    for grp in spec.groups:
        routed = group_optimizer(spec, grp)
        if routed.type in seen:
            continue
        seen.add(routed.type)
        for lvl in routed.levels():
            out.append({**lvl, "name": f"{grp.params}.{lvl['name']}", "params": grp.params})
    return out
