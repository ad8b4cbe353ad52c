"""Defaults resolved once: the resolved spec is what the compiler and the graph read, the
resolution is idempotent and round-trips through `fmt --resolved`, and the rules that lowering
relies on are checker rules (a spec `check` accepts lowers)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from nestdsl.cli import app
from nestdsl.diagnostics import SpecError
from nestdsl.spec import load_spec, parse_text
from nestdsl.spec.resolve import resolve

SPECS = Path(__file__).resolve().parents[2] / "specs"
PRESETS = sorted(p for p in SPECS.glob("*.yaml"))


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_resolution_is_idempotent_and_round_trips(path: Path, tmp_path: Path) -> None:
    spec = resolve(load_spec(path))
    assert resolve(spec) == spec
    for mem in spec.memories.values():
        if mem.kind != "attention":
            assert mem.residual is not None and mem.norm is not None and mem.init is not None
            assert mem.kind != "mlp" or (mem.depth and mem.hidden and mem.activation)
            assert (mem.rule.erase is not None) == (mem.rule.kind == "dgd")
    out = CliRunner().invoke(app, ["fmt", str(path), "--resolved"])
    assert out.exit_code == 0, out.output
    again = tmp_path / path.name
    again.write_text(out.output.replace("optimizer: optim/", f"optimizer: {SPECS}/optim/"))
    assert resolve(load_spec(again)).memories == spec.memories


def _hope_without_residual() -> str:
    doc = yaml.safe_load((SPECS / "hope.yaml").read_text())
    for mem in doc["memories"].values():
        mem.pop("residual", None)
    doc["optimizer"] = {"type": "adamw", "lr": 1e-3}
    return yaml.safe_dump(doc, sort_keys=False)


def test_an_unset_residual_means_the_same_to_the_graph_and_the_compiler() -> None:
    import nestdsl
    from nestdsl.graph import build_graph

    _, spec = parse_text(_hope_without_residual(), "hope.yaml")
    # used by a self_modifying layer: Hope's residual MLP (Eq. 89), in the plan and in the graph
    graph = build_graph(spec)
    assert "k + MLP_θ_c(k)" in graph.nodes["memory:titans"]["update"]
    layer = nestdsl.compile(spec, compile=False).model.blocks[0].slots[0].layer
    assert layer.mem_mlp.residual and layer.proj_mlp.residual
    # the same memory in a plain memory layer is a bare MLP (Titans), in both too
    doc = yaml.safe_load((SPECS / "titans-lmm.yaml").read_text())
    doc["optimizer"] = {"type": "adamw", "lr": 1e-3}
    _, titans = parse_text(yaml.safe_dump(doc, sort_keys=False), "titans.yaml")
    assert "MLP_θ_c(k) − v" in build_graph(titans).nodes["memory:titans"]["update"]
    assert not nestdsl.compile(titans, compile=False).model.blocks[0].slots[0].layer.mlp.residual


@pytest.mark.parametrize("change,message", [
    (lambda d: d["memories"]["projection"].update(read="after"), "read the chunk-start state"),
    (lambda d: d["memories"]["projection"].update(kind="linear", depth=None, hidden=None,
                                                  residual=None, activation=None),
     "not mlp"),
    (lambda d: d["levels"].update(chunk={"every": "12 tokens"}, cms_fast={"every": "16 tokens"})
     or d["memories"]["projection"].update(level="cms_fast")
     or [st.update(signal="local") for st in d["cms"]["hope_cms"]["stages"][:2]], "do not nest"),
    (lambda d: d["memories"]["projection"].update(heads=2), "heads"),
], ids=["projections-read-after", "linear-projections", "chunks-do-not-nest", "heads-differ"])
def test_what_lowering_needs_is_a_checker_rule(change, message: str, tmp_path: Path) -> None:
    doc = yaml.safe_load((SPECS / "hope.yaml").read_text())
    doc["optimizer"] = {"type": "adamw", "lr": 1e-3}
    change(doc)
    for mem in doc["memories"].values():
        for k in [k for k, v in mem.items() if v is None]:
            del mem[k]
    path = tmp_path / "hope.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(SpecError, match=message) as e:
        load_spec(path)
    assert "hope.yaml:" in str(e.value)


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_every_checked_preset_lowers(path: Path) -> None:
    import nestdsl

    system = nestdsl.compile(load_spec(path), compile=False)
    assert sum(p.numel() for p in system.model.parameters()) > 0
