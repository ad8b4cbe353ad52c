"""The level graph: nodes, edges (kind, grad/stop) and frequency ordering (docs/design.md §2-§3)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import networkx as nx
import pytest

from nestdsl.graph import build_graph, update_equation
from nestdsl.graph.level_graph import levels_in_order
from nestdsl.spec import ir
from nestdsl.spec.shipped import OPTIMIZER_DIR

Loader = Callable[[str | Path], ir.Spec]
SPECS = Path(__file__).resolve().parents[2] / "specs"
# model presets, and the optimizer specs shipped in the package (`optimizer: adamw`)
PRESETS = sorted(SPECS.rglob("*.yaml")) + sorted(OPTIMIZER_DIR.glob("*.yaml"))


def _id(p: Path) -> str:
    return str(p.relative_to(SPECS)) if p.is_relative_to(SPECS) else f"optim/{p.name}"

EDGE_KINDS = {"reads", "generates", "writes", "meta", "optimizes"}


def _edges(g: nx.MultiDiGraph, kind: str) -> set[tuple[str, str, str]]:
    return {(u, v, d["grad"]) for u, v, d in g.edges(data=True) if d["kind"] == kind}


def test_hope_levels_with_periods_and_classes(hope: ir.Spec) -> None:
    g = build_graph(hope)
    levels = {g.nodes[n]["name"]: g.nodes[n] for n in levels_in_order(g)}
    for name, period, cls in [
        ("chunk", "16 tokens", "in-context"),
        ("cms_fast", "16 tokens", "in-context"),
        ("cms_mid", "64 tokens", "in-context"),
        ("cms_slow", "4 steps", "persistent"),
        ("step", "1 step", "outer"),
    ]:
        assert levels[name]["period"] == period
        assert levels[name]["cls"] == cls
    # The outer optimizer's own levels come from nestdsl.optim.levels (or the fallback).
    assert any(n.startswith("opt.") for n in levels)


def test_hope_levels_ordered_by_frequency(hope: ir.Spec) -> None:
    g = build_graph(hope)
    order = [g.nodes[n]["name"] for n in levels_in_order(g)]
    assert order.index("chunk") < order.index("cms_mid") < order.index("step") < order.index("cms_slow")
    freqs = [g.nodes[n]["frequency"] for n in levels_in_order(g)]
    assert freqs == sorted(freqs, reverse=True)  # fastest first; all known with data given
    assert [g.nodes[n]["rank"] for n in levels_in_order(g)] == list(range(len(order)))


def test_hope_edges(hope: ir.Spec) -> None:
    g = build_graph(hope)
    assert {d["kind"] for *_, d in g.edges(data=True)} == EDGE_KINDS
    assert {d["grad"] for *_, d in g.edges(data=True)} <= {"grad", "stop"}
    gen = _edges(g, "generates")
    # Self-modifying Titans: the projection memories generate k, v, eta, alpha for M_mem;
    # q stays a static projection.
    for role in ("k", "v", "eta", "alpha"):
        assert (f"memory:projection.{role}", "memory:titans", "grad") in gen
    assert ("proj:titans", "memory:titans", "grad") in gen
    writes = _edges(g, "writes")
    assert ("memory:titans", "state:titans", "grad") in writes
    # Task-signal in-context CMS levels write with stop-gradient (docs/design.md §3.3).
    assert ("cms:hope_cms.0", "state:hope_cms.0", "stop") in writes
    assert ("cms:hope_cms.1", "state:hope_cms.1", "stop") in writes
    reads = _edges(g, "reads")
    assert ("state:titans", "memory:titans", "grad") in reads
    meta = _edges(g, "meta")
    assert ("level:step", "state:titans", "grad") in meta
    assert ("level:step", "state:hope_cms.0", "grad") in meta
    opt = _edges(g, "optimizes")
    assert ("optimizer", "cms:hope_cms.2", "stop") in opt  # the persistent level
    assert ("optimizer", "proj:titans", "stop") in opt
    # The persistent CMS stage has no in-context state.
    assert "state:hope_cms.2" not in g


def test_hope_memory_attributes(hope: ir.Spec) -> None:
    g = build_graph(hope)
    m = g.nodes["memory:titans"]
    assert m["level"] == "chunk" and m["read"] == "after" and m["writes"] == "grad"
    assert "Hope Eq. 88" in m["update"]
    assert g.nodes["cms:hope_cms.2"]["level"] == "cms_slow"
    owns = g.nodes["level:chunk"]["owns"]
    assert "memory:titans" in owns and "state:titans" in owns


def test_writes_stop_and_nested_cms(hope: ir.Spec) -> None:
    spec = hope.model_copy(deep=True)
    spec.memories["titans"].writes = "stop"
    spec.cms["hope_cms"].mode = "nested"
    g = build_graph(spec)
    assert ("memory:titans", "state:titans", "stop") in _edges(g, "writes")
    # Nested CMS: stage 0's initial state is learned by the next slower stage's level.
    assert ("level:cms_mid", "state:hope_cms.0", "grad") in _edges(g, "meta")


@pytest.mark.parametrize(
    ("objective", "kind", "expect"),
    [
        ("dot", "gd", "(linear attention)"),
        ("dot", "dgd", "(DeltaNet)"),
        ("l2", "gd", "(DeltaNet)"),
        ("l2", "dgd", "M(I − 0.5 k kᵀ) − 0.5·(M k − v) kᵀ"),
    ],
)
def test_update_equation_linear(objective: str, kind: str, expect: str) -> None:
    mem = ir.LinearMemory(kind="linear", objective=objective, rule=ir.Rule(kind=kind, lr=0.5))
    assert expect in update_equation(mem)


def test_update_equation_gated_delta() -> None:
    mem = ir.LinearMemory(kind="linear", objective="dot",
                    rule=ir.Rule(kind="dgd", lr=ir.LearnedGate(learned="sigmoid"),
                                 retention=ir.LearnedGate(learned="sigmoid"), erase="retained"))
    assert update_equation(mem) == "M ← M(α_t I − α_t·η_t k kᵀ) + η_t·v kᵀ  (Gated DeltaNet)"


@pytest.mark.parametrize(("erase", "eps"), [("eta", "η_t/d"),
                                            ("normalized", "η_t/d/(1 + η_t/d‖k‖²)"),
                                            ("retained", "0.9·η_t/d")])
def test_update_equation_prints_the_erase_rate(erase: str, eps: str) -> None:
    mem = ir.MLPMemory(kind="mlp", objective="l2", norm=True, residual=True,
                    rule=ir.Rule(kind="dgd", lr=ir.LearnedGate(learned="sigmoid"),
                                 retention=0.9, erase=erase, lr_per_dim=True))
    text = update_equation(mem, 16)
    assert f"W_in(0.9 I − {eps} k kᵀ)" in text
    assert "k + LN(MLP_θ_c(k))" in text


def test_samba_has_both_mixers_on_token_level(load_preset: Loader) -> None:
    g = build_graph(load_preset(SPECS / "samba.yaml"))
    assert g.nodes["memory:mamba"]["level"] == "token"
    assert g.nodes["memory:swa"]["mem_kind"] == "attention"
    assert "mlp:mamba_block.1" in g and "mlp:swa_block.1" in g


def test_scale_hope_token_levels_map_to_steps(load_preset: Loader) -> None:
    g = build_graph(load_preset(SPECS / "scale" / "hope-340m.yaml"))
    mid, slow = g.nodes["level:cms_mid"], g.nodes["level:cms_slow"]
    assert mid["cls"] == slow["cls"] == "persistent"
    assert (mid["steps_every"], slow["steps_every"]) == (2, 32)
    assert ("optimizer", "cms:hope_cms.1", "stop") in _edges(g, "optimizes")


@pytest.mark.parametrize("path", PRESETS, ids=_id)
def test_every_preset_builds(path: Path, load_preset: Loader) -> None:
    g = build_graph(load_preset(path))
    levels = levels_in_order(g)
    assert levels, "every spec has at least the outer level"
    for _, _, d in g.edges(data=True):
        assert d["kind"] in EDGE_KINDS and d["grad"] in {"grad", "stop"}
    for n, d in g.nodes(data=True):
        if d["kind"] != "level":
            assert f"level:{d['level']}" in g, n  # every node is owned by a level in the graph
        if d["kind"] == "memory":
            assert d["read"] in {"after", "before", "chunk"} and d["update"]
