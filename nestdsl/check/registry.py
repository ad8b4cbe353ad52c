"""Torch-free registry of the names a spec may use for pluggable pieces.

The checker must not import torch (``nestdsl check`` stays fast and works without it), yet the
objective registry is open: `nestdsl.ops.objectives` registers torch implementations. So the
names live here as plain strings; the ops package registers its implementations under the same
names, and a plugin that adds an objective calls `register_objective_name` (no torch needed).
"""

from __future__ import annotations

import sys

# Built-in inner objectives (docs/design.md §2): `dot` and `l2` are required by the paper; `huber`
# follows Miras. Order matters only for the "allowed:" hint.
_OBJECTIVES: list[str] = ["dot", "l2", "huber"]


def register_objective_name(name: str) -> None:
    """Make `name` a valid `objective:` value for the checker (idempotent)."""
    if name not in _OBJECTIVES:
        _OBJECTIVES.append(name)


def objective_names() -> list[str]:
    """All objective names a spec may use.

    If the torch-side registry is already imported (e.g. inside `nestdsl train`), its names count
    too, so an objective registered only there is not rejected. We never import it ourselves:
    that would pull torch into `nestdsl check`.
    """
    names = list(_OBJECTIVES)
    ops = sys.modules.get("nestdsl.ops.objectives")
    extra = getattr(ops, "OBJECTIVES", None) if ops is not None else None
    if isinstance(extra, dict):
        names.extend(str(n) for n in extra if n not in names)
    return names
