"""The level graph (networkx), the schedule and their renderers (docs/design.md §2, §3, §5).

    build_graph(spec)            -> networkx.MultiDiGraph (nodes: levels, memories, states, ...)
    schedule(spec, seq_len=...)  -> Schedule (which level fires at which token / step)
    render_graph(spec, fmt, ...) text | mermaid | dot | json | png (see `render`)

No torch here; matplotlib is imported only by the png renderer.
"""

from __future__ import annotations

from typing import Any

from nestdsl.graph.level_graph import build_graph, update_equation
from nestdsl.graph.schedule import Level, Schedule, schedule

__all__ = ["Level", "Schedule", "build_graph", "render_graph", "schedule", "update_equation"]


def render_graph(*args: Any, **kwargs: Any) -> str | None:
    """Lazy alias of `nestdsl.graph.render.render_graph` (keeps rich out of plain imports)."""
    from nestdsl.graph.render import render_graph as _render

    return _render(*args, **kwargs)
