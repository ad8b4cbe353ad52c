"""Unit tests of the checker's building blocks (period classes, cycles, registry, partial checks)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nestdsl.check import check_spec
from nestdsl.check.checker import find_cycles
from nestdsl.check.registry import objective_names, register_objective_name
from nestdsl.diagnostics import SpecError, did_you_mean
from nestdsl.pipeline import load_spec
from nestdsl.spec import ir, parse_text
from nestdsl.spec.periods import DataShape, classify

SHAPE = DataShape(seq_len=128, batch=8)


@pytest.mark.parametrize(
    ("period", "kind", "k"),
    [
        ("1 tokens", "in-context", None),
        ("16 tokens", "in-context", None),
        ("64 tokens", "in-context", None),
        ("48 tokens", "non-dividing", None),
        ("128 tokens", "between", None),
        ("512 tokens", "between", None),
        ("1024 tokens", "persistent", 1),
        ("4096 tokens", "persistent", 4),
        ("1500 tokens", "between", None),
        ("1 steps", "persistent", 1),
        ("4 steps", "persistent", 4),
    ],
)
def test_classify(period: str, kind: str, k: int | None) -> None:
    cls = classify(ir.Period.model_validate(ir.Period.parse(period)), SHAPE)
    assert cls.kind == kind
    assert cls.every_k == k


def test_batch_one_makes_seq_len_persistent() -> None:
    cls = classify(ir.Period(every=128, unit="tokens"), DataShape(128, 1))
    assert (cls.kind, cls.every_k) == ("persistent", 1)


def test_find_cycles_reports_each_cycle_once() -> None:
    g = {"a": [("b", ("p", 0))], "b": [("c", ("p", 1))], "c": [("a", ("p", 2)), ("d", ("p", 3))], "d": []}
    cycles = find_cycles(g)
    assert cycles == [(["a", "b", "c"], ("p", 0))]
    assert find_cycles({"a": [("b", ())], "b": []}) == []


def test_registry_is_open() -> None:
    assert {"dot", "l2", "huber"} <= set(objective_names())
    register_objective_name("lp3")
    assert "lp3" in objective_names()


def test_did_you_mean_ignores_case() -> None:
    assert did_you_mean("L2", ["dot", "l2"]) == "did you mean 'l2'?"
    assert did_you_mean("zzz", ["dot", "l2"]) is None


MINI = """\
name: mini
model: {width: 64, depth: 1, heads: 4, pattern: [b]}
memories:
  m: {kind: linear, objective: dot, rule: {kind: gd}}
blocks:
  b: {layers: [{type: memory, memory: m}]}
"""


def test_valid_minimal_spec() -> None:
    doc, spec = parse_text(MINI, "mini.yaml")
    check_spec(spec, doc)


def test_validation_and_semantic_errors_reported_together(tmp_path: Path) -> None:
    # `m2` fails validation (bad kind); `heads: 5` is a semantic error elsewhere: both appear,
    # and the block's reference to the rejected memory is not reported a second time.
    text = MINI.replace("heads: 4", "heads: 5").replace(
        "memories:\n", "memories:\n  m2: {kind: lstm}\n").replace("memory: m}", "memory: m}, {type: memory, memory: m2}")
    (tmp_path / "mini.yaml").write_text(text)
    with pytest.raises(SpecError) as e:
        parse_text(text, "mini.yaml")                 # the parse stage: validation only
    assert not any("heads do not divide" in d.message for d in e.value.diagnostics)
    with pytest.raises(SpecError) as e:
        load_spec(tmp_path / "mini.yaml")             # parse + check: both
    messages = [d.message for d in e.value.diagnostics]
    assert any("heads do not divide" in m for m in messages)
    assert any("unknown kind 'lstm' in 'memories.m2'" in m for m in messages)
    assert not any("unknown memory" in m for m in messages)


def test_no_data_section_uses_documented_defaults() -> None:
    text = MINI + "levels:\n  c: {every: 100 tokens}\n"
    text = text.replace("rule: {kind: gd}}", "rule: {kind: gd}, level: c}")
    doc, spec = parse_text(text, "mini.yaml")
    check_spec(spec, doc)  # 100 < default seq_len 128: fine for a memory (no divisibility rule)
    text2 = text.replace("100 tokens", "128 tokens")
    doc, spec = parse_text(text2, "mini.yaml")
    with pytest.raises(SpecError, match="not smaller than seq_len 128"):
        check_spec(spec, doc)
