"""The update equation of every memory of every preset: one renderer (graph/level_graph.py,
torch-free), pinned by a snapshot per preset, and printed identically by `graph` and by the
lowering plan (`compile --explain`).

    NESTDSL_UPDATE_GOLDEN=1 pytest tests/graph/test_equation_snapshots.py    # after a deliberate change
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nestdsl.graph import build_graph
from nestdsl.pipeline import load_spec

SPECS = Path(__file__).resolve().parents[2] / "specs"
SNAPSHOTS = Path(__file__).resolve().parent / "snapshots"
PRESETS = sorted(SPECS.glob("*.yaml"))
UPDATE = os.environ.get("NESTDSL_UPDATE_GOLDEN") == "1"


def equations(path: Path) -> dict[str, str]:
    g = build_graph(load_spec(path))
    return {d["label"]: d["update"] for _, d in g.nodes(data=True)
            if d["kind"] == "memory" and d.get("update")}


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_update_equations_match_the_snapshot(path: Path) -> None:
    text = "".join(f"{name}: {eq}\n" for name, eq in sorted(equations(path).items()))
    snap = SNAPSHOTS / f"{path.stem}.txt"
    if UPDATE or not snap.exists():
        if not UPDATE:
            pytest.fail(f"no {snap.name}; run with NESTDSL_UPDATE_GOLDEN=1 to create it")
        snap.write_text(text, encoding="utf-8")
    assert text == snap.read_text(encoding="utf-8")


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_the_plan_prints_the_graphs_equations(path: Path) -> None:
    import nestdsl

    graph = set(equations(path).values())
    rows = nestdsl.compile(load_spec(path), compile=False).plan
    plan = {r.update for r in rows if r.kind.startswith(("memory", "self_modifying", "mal", "mag"))
            and r.update}
    assert plan <= graph, plan - graph
    assert plan, "no memory in the plan"
