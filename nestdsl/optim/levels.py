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

Levels of optimizers routed by `groups` to another type are included with that `params`.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["describe_levels", "levels_for_type", "optimizer_spec"]


def _level(
    name: str,
    state: str,
    objective: str,
    memory: str,
    period: int,
    reads: list[str],
    writes: str,
    doc: str,
    decay: float | None = None,
    lr: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "name": name,
        "state": state,
        "objective": objective,
        "memory": memory,
        "period": period,
        "unit": "steps",
        "reads": reads,
        "writes": writes,
        "decay": decay,
        "lr": lr,
        "doc": doc,
        **extra,
    }


def _ns(spec: Any, reads: str, name: str = "newton_schulz") -> dict[str, Any]:
    return _level(
        name,
        "-",
        "orthogonality",
        "linear",
        1,
        [reads],
        "params",
        f"Newton-Schulz output: {spec.ns_steps} inner GD steps on ||O^T O - I|| (Eq. 43-44)",
        inner_steps=spec.ns_steps,
    )


def levels_for_type(kind: str, spec: Any) -> list[dict[str, Any]]:
    """Levels of an optimizer of type `kind` with the hyper-parameters of `spec`; a momentum
    memory with `output: newton_schulz` gains the orthogonalisation level it writes into."""
    from nestdsl.spec.ir import OPTIMIZER_FIELDS

    out = _memory_levels(kind, spec)
    if "output" in OPTIMIZER_FIELDS[kind] and spec.output == "newton_schulz":
        out[-1]["writes"] = "newton_schulz"
        out.append(_ns(spec, out[-1]["name"]))
    return out


def _memory_levels(kind: str, spec: Any) -> list[dict[str, Any]]:
    s = spec
    if kind == "sgd":
        return [
            _level(
                "gradient_step",
                "params",
                "dot",
                "linear",
                1,
                ["grad"],
                "params",
                "plain GD: one step on <W x, dL/dy> (Eq. 7-9)",
                lr=s.lr,
            )
        ]
    if kind == "momentum":
        return [
            _level(
                "momentum",
                "m",
                "dot",
                "linear",
                1,
                ["grad"],
                "params",
                "m <- beta m - lr g (Eq. 33)",
                decay=s.beta,
                lr=s.lr,
            )
        ]
    if kind == "precond_momentum":
        return [
            _level(
                "preconditioner",
                "v",
                "l2",
                "elementwise",
                1,
                ["grad^2"],
                "momentum",
                "running RMS of g, P = 1/(sqrt(v)+eps) (App. B Eq. 101)",
                decay=s.beta2,
            ),
            _level(
                "momentum",
                "m",
                "dot",
                "linear",
                1,
                ["grad", "preconditioner"],
                "params",
                "m <- beta m - lr P g (Eq. 47)",
                decay=s.beta,
                lr=s.lr,
            ),
        ]
    if kind == "delta_momentum":
        return [
            _level(
                "delta_momentum",
                "m",
                "l2",
                "linear",
                1,
                ["grad"],
                "params",
                f"m <- m(beta I - eta_m g^T g) - lr g, g normalised '{s.normalize}' (Eq. 49)",
                decay=s.beta,
                lr=s.momentum_lr,
            )
        ]
    if kind == "dmgd":
        return [
            _level(
                "deep_momentum",
                "M,W1,W2",
                "dot",
                "mlp",
                1,
                ["grad"],
                "params",
                f"MLP momentum (hidden x{s.hidden}) trained by GD on <m(u), g> (Eq. 50)",
                decay=s.beta,
                lr=s.momentum_lr,
            )
        ]
    if kind == "muon":
        m = _level(
            "momentum",
            "m",
            "dot",
            "linear",
            1,
            ["grad"],
            "newton_schulz",
            "m <- beta m + g (Eq. 42)",
            decay=s.beta,
        )
        return [m, _ns(s, "momentum")]
    if kind == "m3":
        return [
            _level(
                "fast_momentum",
                "m_fast",
                "dot",
                "linear",
                1,
                ["grad"],
                "newton_schulz_fast",
                "EMA of g every step (Alg. 1 line 7)",
                decay=s.beta,
            ),
            _level(
                "second_moment",
                "v",
                "l2",
                "elementwise",
                1,
                ["grad^2"],
                "params",
                "EMA of g^2, Adam denominator (Alg. 1 line 8)",
                decay=s.beta2,
            ),
            _ns(s, "fast_momentum", "newton_schulz_fast"),
            _level(
                "slow_momentum",
                "m_slow,acc,o_slow",
                "dot",
                "linear",
                s.slow_every,
                ["grad_sum"],
                "newton_schulz_slow",
                f"EMA of the gradient sum of the last {s.slow_every} steps (Alg. 1 line 3)",
                decay=s.beta_slow,
                weight=s.alpha,
            ),
            {**_ns(s, "slow_momentum", "newton_schulz_slow"), "period": s.slow_every},
        ]
    if kind == "adamw":
        return [
            _level(
                "first_moment",
                "exp_avg",
                "l2",
                "elementwise",
                1,
                ["grad"],
                "params",
                "Adam m: element-wise l2 memory (App. B Eq. 105)",
                decay=s.beta,
            ),
            _level(
                "second_moment",
                "exp_avg_sq",
                "l2",
                "elementwise",
                1,
                ["grad^2"],
                "params",
                "Adam v (App. B Eq. 105)",
                decay=s.beta2,
            ),
        ]
    if kind == "dgd":
        return [
            _level(
                "delta_gradient_descent",
                "params",
                "l2",
                "linear",
                1,
                ["grad", "layer_inputs"],
                "params",
                "W <- W - eta' W C - eta g, C from hooked layer inputs (Eq. 57)",
                lr=s.lr,
            )
        ]
    raise ValueError(f"unknown optimizer type {kind!r}")


def optimizer_spec(spec: Any) -> Any:
    """The IR `Optimizer` of an optimizer spec file path, the name of a shipped optimizer spec
    (`"m3"`: `nestdsl/optim/specs/`, used when no such file exists), a loaded `ir.Spec` or an
    `Optimizer` node (returned as is)."""
    from nestdsl.spec import ir, load_spec
    from nestdsl.spec.shipped import shipped_optimizer

    if isinstance(spec, (str, os.PathLike)):
        shipped = shipped_optimizer(str(spec)) if isinstance(spec, str) else None
        spec = load_spec(shipped if shipped is not None and not os.path.isfile(spec) else spec)
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
    spec = optimizer_spec(spec)
    out: list[dict[str, Any]] = []
    covered = "all"
    for lvl in levels_for_type(spec.type, spec):
        out.append({**lvl, "params": covered if not spec.groups else "default"})
    seen = {spec.type}
    for grp in spec.groups:
        kind = grp.type or spec.type
        if kind in seen:
            continue
        seen.add(kind)
        for lvl in levels_for_type(kind, spec):
            out.append({**lvl, "name": f"{grp.params}.{lvl['name']}", "params": grp.params})
    return out
