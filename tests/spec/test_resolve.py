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
from nestdsl.pipeline import load_spec
from nestdsl.spec import ir, parse_text
from nestdsl.spec.printer import print_spec
from nestdsl.spec.resolve import resolve
from nestdsl.spec.shipped import OPTIMIZER_DIR

SPECS = Path(__file__).resolve().parents[2] / "specs"
PRESETS = sorted(p for p in SPECS.glob("*.yaml"))
# every shipped spec in both syntaxes: model presets (scale ones too), optimizer specs, examples
ALL = sorted(p for p in SPECS.rglob("*") if p.suffix in (".yaml", ".nest")) + sorted(
    OPTIMIZER_DIR.iterdir()) + sorted((SPECS.parent / "examples").rglob("*.nest"))


def _rel(p: Path) -> str:
    return str(p.relative_to(SPECS.parent))


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_resolution_is_idempotent(path: Path) -> None:
    spec = resolve(load_spec(path))
    assert resolve(spec) == spec
    for mem in spec.memories.values():
        if mem.kind != "attention":
            assert mem.residual is not None and mem.norm is not None and mem.init is not None
            assert mem.kind != "mlp" or (mem.depth and mem.hidden and mem.activation)
            assert (mem.rule.erase is not None) == (mem.rule.kind == "dgd")
    # a referenced optimizer is inlined, a trainable spec's `train` defaults filled in
    assert isinstance(spec.optimizer, ir.Optimizer) and spec.train is not None


@pytest.mark.parametrize("to", ["yaml", "nest"])
@pytest.mark.parametrize("path", ALL, ids=_rel)
def test_fmt_resolved_round_trips(path: Path, to: str, tmp_path: Path) -> None:
    # The output stands alone (written elsewhere, it loads: the optimizer is inlined) and
    # parses back to the very resolved spec; printing that again gives the same text.
    spec = resolve(load_spec(path))
    out = CliRunner().invoke(app, ["fmt", str(path), "--resolved", "--to", to])
    assert out.exit_code == 0, out.output
    again = tmp_path / f"again.{to}"
    again.write_text(out.output)
    back = resolve(load_spec(again))
    assert back == spec
    assert print_spec(back, to, full=True) == print_spec(spec, to, full=True)


def test_fmt_resolved_shows_every_default(tmp_path: Path) -> None:
    path = tmp_path / "mini.yaml"
    path.write_text(MINI)
    plain = CliRunner().invoke(app, ["fmt", str(path)])
    assert plain.exit_code == 0, plain.output
    for hidden in ("vocab", "seq_len", "batch", "steps", "schedule", "tie_embeddings", "eps"):
        assert f"{hidden}:" not in plain.output  # the canonical form stays minimal
    assert "optimizer: adamw" in plain.output
    out = CliRunner().invoke(app, ["fmt", str(path), "--resolved"])
    assert out.exit_code == 0, out.output
    data = yaml.safe_load(out.output)
    assert data["model"]["vocab"] == 256 and data["model"]["tie_embeddings"] is True
    assert data["data"]["seq_len"] == 128 and data["data"]["batch"] == 8 and data["data"]["seed"] == 0
    assert data["train"] == ir.Train().model_dump(mode="json", exclude_none=True)  # its defaults
    assert data["blocks"]["b"]["layers"][0] == {
        "type": "memory", "memory": "m", "norm": "rms", "residual": True, "conv": 4,
        "qk_norm": True, "output_gate": True}
    # the referenced optimizer, inlined with the fields its type reads (and only those: the
    # checker rejects a field the type ignores), and where it was read from
    assert data["optimizer"] == {"type": "adamw", "lr": 0.003, "weight_decay": 0.01, "beta": 0.9,
                                 "beta2": 0.99, "eps": 1e-08}
    assert out.output.startswith("# optimizer 'adamw': read from nestdsl/optim/specs/adamw.yaml")
    nest = CliRunner().invoke(app, ["fmt", str(path), "--resolved", "--to", "nest"])
    assert "model { vocab 256  width 32  depth 1  heads 2  pattern [b]  tie_embeddings true }" in nest.output
    assert "data copy { seq_len 128  batch 8  seed 0  length 16 }" in nest.output


MINI = """\
nestdsl: 1
name: mini
model: {width: 32, depth: 1, heads: 2, pattern: [b]}
levels: {chunk: {every: 16 tokens}}
memories:
  m: {kind: linear, objective: dot, rule: {kind: gd, lr: 0.5}, level: chunk}
blocks:
  b: {layers: [{type: memory, memory: m}]}
optimizer: adamw
data: {task: copy}
"""


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
