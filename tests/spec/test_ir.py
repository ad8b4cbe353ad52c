"""The IR: equality ignores positions, spans point at the source, periods parse."""

from __future__ import annotations

import pytest

from nestdsl.diagnostics import SpecError
from nestdsl.spec import ir, parse_text

HOPE_LIKE = """\
name: t
model: {width: 32, depth: 1, heads: 2, pattern: [b]}
levels:
  c: {every: 16 tokens}
  slow: {every: 4 steps}
memories:
  m: {kind: linear, objective: l2, rule: {kind: gd, lr: 0.5}, level: c}
blocks:
  b:
    layers:
      - {type: memory, memory: m}
"""


def test_spans_point_at_the_source() -> None:
    doc, spec = parse_text(HOPE_LIKE, "x.yaml")
    assert str(spec.memories["m"].span) == "x.yaml:7:6"
    assert spec.levels["c"].every.span is not None
    assert spec.levels["c"].every.span.line == 4
    layer = spec.blocks["b"].layers[0]
    assert (layer.span.line, layer.span.col) == (11, 9)


def test_equality_ignores_positions() -> None:
    _, a = parse_text(HOPE_LIKE, "a.yaml")
    _, b = parse_text("\n\n" + HOPE_LIKE, "b.yaml")
    assert a == b
    _, c = parse_text(HOPE_LIKE.replace("lr: 0.5", "lr: 0.25"), "c.yaml")
    assert a != c


@pytest.mark.parametrize(
    "text, every, unit",
    [("16 tokens", 16, "tokens"), ("1 token", 1, "tokens"), ("4 steps", 4, "steps"), (8, 8, "tokens")],
)
def test_period_forms(text: object, every: int, unit: str) -> None:
    p = ir.Period.model_validate(ir.Period.parse(text))
    assert (p.every, p.unit) == (every, unit)
    assert ir.Period.model_validate(ir.Period.parse(str(p))) == p


def test_builtin_levels() -> None:
    _, spec = parse_text(HOPE_LIKE, "x.yaml")
    assert spec.level_period("token").every == 1
    assert spec.level_period("step").unit == "steps"
    assert spec.level_period("slow").every == 4


def test_duplicate_key_is_positioned() -> None:
    with pytest.raises(SpecError) as e:
        parse_text(HOPE_LIKE + "name: again\n", "d.yaml")
    d = e.value.diagnostics[0]
    assert (d.span.line, d.span.col) == (12, 1)
    assert "duplicate key 'name'" in d.message
    assert "line 1" in (d.hint or "")


def test_schema_is_json_serialisable() -> None:
    import json

    schema = ir.Spec.model_json_schema()
    text = json.dumps(schema)
    assert "span" not in schema["properties"]
    assert "self_modifying" in text
