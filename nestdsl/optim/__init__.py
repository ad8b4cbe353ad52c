"""nestdsl.optim: the Deep Optimizers (docs/design.md §4) as `torch.optim.Optimizer` subclasses.

    from nestdsl.optim import build, describe_levels
    opt = build(spec.optimizer, model.named_parameters())

One concept per module: `momentum.MomentumSGD` (dot objective), `precond.PreconditionedMomentum`,
`delta_momentum.DeltaMomentum` (l2 objective), `dmgd.DMGD` (MLP momentum), `muon.Muon`
(Newton-Schulz output), `m3.M3` (multi-scale momenta + Adam denominator), `dgd.DGD` (Delta
Gradient Descent for nn.Linear, with input hooks); AdamW is `torch.optim.AdamW` (`adamw.adamw`).
Each type's spec model (fields, level description, implementation) is in
nestdsl/spec/optimizers.py.

This package imports torch lazily: `nestdsl.optim.levels` (and `describe_levels`) is pure
Python so the level-graph code can use it without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "DGD",
    "DMGD",
    "M3",
    "DeltaMomentum",
    "MomentumSGD",
    "Muon",
    "MultiOptimizer",
    "PreconditionedMomentum",
    "build",
    "describe_levels",
    "newton_schulz",
    "optimizer_spec",
    "register_dgd_hooks",
]

_LAZY = {
    "DGD": "nestdsl.optim.dgd",
    "register_dgd_hooks": "nestdsl.optim.dgd",
    "DMGD": "nestdsl.optim.dmgd",
    "M3": "nestdsl.optim.m3",
    "DeltaMomentum": "nestdsl.optim.delta_momentum",
    "MomentumSGD": "nestdsl.optim.momentum",
    "Muon": "nestdsl.optim.muon",
    "PreconditionedMomentum": "nestdsl.optim.precond",
    "MultiOptimizer": "nestdsl.optim.builder",
    "build": "nestdsl.optim.builder",
    "newton_schulz": "nestdsl.optim._base",
    "describe_levels": "nestdsl.optim.levels",
    "optimizer_spec": "nestdsl.optim.levels",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nestdsl.optim' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
