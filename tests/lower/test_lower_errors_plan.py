"""Lowering errors are positioned diagnostics; plan, levels, loss and compile fallback."""

from __future__ import annotations

import textwrap

import pytest
import torch
import torch.nn.functional as F
from lower_helpers import build, model_spec
from typer.testing import CliRunner

import nestdsl.lower.registry as registry
from nestdsl.cli import app
from nestdsl.diagnostics import SpecError
from nestdsl.lower import compile_spec
from nestdsl.spec import parse_text

DN = "  m: {kind: linear, objective: l2, rule: {kind: gd, lr: {learned: sigmoid}}}"


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(textwrap.dedent(text).splitlines(), 1) if needle in line)


@pytest.mark.parametrize("memories,layers,levels,needle,message", [
    (DN, "      - {type: memory, memory: nope}", "", "memory: nope", "unknown memory 'nope'"),
    ("  m: {kind: linear, objective: l2, heads: 3}", "      - {type: memory, memory: m}", "",
     "heads: 3", "3 heads do not divide model width 16"),
    ("  m: {kind: linear, objective: l2, level: slow}", "      - {type: memory, memory: m}",
     "  slow: {every: 2 steps}", "level: slow", "a period in optimizer steps"),
    ("  m: {kind: linear}", "      - {type: memory, memory: m}", "", "kind: linear", "needs an `objective`"),
    (DN + "\n  a: {kind: attention}", "      - {type: mal, memory: a, attention: m}", "", "type: mal",
     "is an attention memory"),
    ("  m: {kind: mlp, objective: l2, rule: {lr: {learned: sigmoid, scale: 0.1, init: 0.5}}}",
     "      - {type: memory, memory: m}", "", "init: 0.5", "out of reach of the gate"),
])
def test_lowering_an_unchecked_spec_checks_it_first(memories, layers, levels, needle, message) -> None:
    """`compile_spec` of a parsed-only spec runs the checker (the lowering never re-validates):
    its problems are the checker's positioned diagnostics."""
    text = model_spec(memories, layers, levels=levels)
    with pytest.raises(SpecError) as ei:
        build(text)
    found = [d for d in ei.value.diagnostics if message in d.message]
    assert found, [d.message for d in ei.value.diagnostics]
    assert found[0].span.line == _line_of(text, needle), (found[0].span, text)


def test_every_layer_type_of_the_ir_has_a_builder() -> None:
    from nestdsl.spec.ir import LAYER_TYPES

    assert set(registry.PROVIDERS) == set(LAYER_TYPES)
    for t in LAYER_TYPES:
        assert callable(registry.get_builder(t)), t


def test_cli_compile_bad_spec_exits_2(tmp_path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(model_spec(DN, "      - {type: memory, memory: nope}"))
    result = CliRunner().invoke(app, ["compile", str(p), "--no-compile"])
    assert result.exit_code == 2
    assert "bad.yaml:" in result.output and "unknown memory 'nope'" in result.output


def test_cli_compile_explain_prints_step_and_update(tmp_path) -> None:
    p = tmp_path / "dn.yaml"
    p.write_text(model_spec("  m: {kind: linear, objective: dot, rule: {kind: dgd, lr: {learned: sigmoid}, "
                            "retention: {learned: sigmoid}, erase: retained}}", "      - {type: memory, memory: m}"))
    result = CliRunner().invoke(app, ["compile", str(p), "--explain", "--no-compile"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "chunked delta rule" in out and "Gated DeltaNet" in out
    assert "def linear_chunk_step" in out            # the per-chunk step's source
    assert "graph breaks: not measured" in out


def test_plan_rows_and_levels() -> None:
    system = build(model_spec("  m: {kind: mlp, objective: l2, level: c, rule: {lr: 0.1}}",
                              "      - {type: memory, memory: m}\n      - {type: mlp}",
                              levels="  c: {every: 8 tokens}"))
    rows = {r.kind: r for r in system.plan}
    mem = rows["memory/mlp"]
    assert mem.chunk_size == 8 and mem.read == "after" and mem.writes == "grad"
    assert "mlp chunk step" in mem.implementation and mem.update
    assert rows["mlp"].implementation.startswith("SwiGLU")
    levels = {lv.name: lv for lv in system.levels}
    assert levels["step"].every_k == 1 and levels["step"].kind == "outer"
    assert levels["c"].kind == "in-context" and levels["c"].params == []


def test_persistent_level_params_come_from_layers(monkeypatch) -> None:
    """A layer exposing `level_params()` moves those parameters to a persistent level with
    k = steps between updates (tokens periods are converted with data.batch × seq_len)."""
    original = registry.LAYER_BUILDERS["mlp"]

    def build_with_level(ctx, node, name):
        layer = original(ctx, node, name)
        layer.level_params = lambda: {"slow": [layer.w2.weight]}
        return layer

    monkeypatch.setitem(registry.LAYER_BUILDERS, "mlp", build_with_level)
    text = model_spec(DN, "      - {type: mlp}", levels="  slow: {every: 256 tokens}")
    text = text.replace("vocab: 32", "vocab: 256") + "data: {task: copy, seq_len: 16, batch: 4}\n"
    _, spec = parse_text(text, "<test>", "yaml")
    spec._checked = True      # the patched builder uses `slow`; to the checker it is unused
    system = compile_spec(spec, compile=False)
    levels = {lv.name: lv for lv in system.levels}
    assert levels["slow"].kind == "persistent" and levels["slow"].every_k == 4
    w2 = system.model.blocks[0].slots[0].layer.w2.weight
    assert levels["slow"].params == [w2]
    assert all(p is not w2 for p in levels["step"].params)


def test_loss_is_masked_cross_entropy() -> None:
    system = build(model_spec(DN, "      - {type: memory, memory: m}"))
    tokens = torch.randint(0, 32, (2, 10))
    targets = torch.randint(0, 32, (2, 10))
    mask = torch.rand(2, 10) > 0.5
    logits = system.model(tokens)
    ref = F.cross_entropy(logits[mask], targets[mask])
    torch.testing.assert_close(system.model.loss(tokens, targets, mask), ref)
    torch.testing.assert_close(system.model.loss(tokens, targets),
                               F.cross_entropy(logits.flatten(0, 1), targets.flatten()))


def test_compile_failure_falls_back_visibly(monkeypatch) -> None:
    import nestdsl.ops.kernels as ops_kernels

    def broken_compile(fn, *a, **k):
        def run(*args, **kwargs):
            raise RuntimeError("inductor exploded")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setattr(ops_kernels, "_COMPILED", {})
    system = build(model_spec(DN, "      - {type: memory, memory: m}\n      - {type: mlp}"), compile=True)
    tokens = torch.randint(0, 32, (1, 8))
    with pytest.warns(RuntimeWarning, match="inductor exploded"):
        y = system.model(tokens)
    system.set_compile(False)
    torch.testing.assert_close(y, system.model(tokens))
    system.set_compile(True)
    statuses = {r.kind: r.compiled for r in system.plan}
    assert statuses["memory/linear"] == "eager (FALLBACK)" and statuses["mlp"] == "eager (FALLBACK)"
    assert any("inductor exploded" in n for r in system.plan for n in r.notes)
