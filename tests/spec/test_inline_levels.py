"""An inline level (`level: {every: 16 tokens}` on a memory or a CMS stage; `.nest`:
`level every 16 tokens`, `stage every 4 steps`) is an anonymous level: the same as declaring it
under `levels:` with its generated name (`<memory>.level`, `<cms>.stages.<i>.level`), for the
resolved spec, the checker and the level graph; errors in it point into the inline mapping."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from nestdsl.cli import app
from nestdsl.diagnostics import SpecError
from nestdsl.graph import build_graph
from nestdsl.pipeline import load_spec
from nestdsl.spec.resolve import resolve

SPECS = Path(__file__).resolve().parents[2] / "specs"

NAMED = """\
nestdsl: 1
name: mini
model: {width: 32, depth: 1, heads: 2, pattern: [b]}
levels:
  m.level: {every: 16 tokens, doc: C}
  c.stages.1.level: {every: 4 steps}
  fast: {every: 16 tokens}
memories:
  m: {kind: linear, objective: dot, rule: {kind: gd, lr: 0.5}, level: m.level}
cms:
  c: {stages: [{level: fast}, {level: c.stages.1.level}]}
blocks:
  b: {layers: [{type: memory, memory: m}, {type: cms, cms: c}]}
optimizer: adamw
data: {task: copy}
"""

INLINE = """\
nestdsl: 1
name: mini
model: {width: 32, depth: 1, heads: 2, pattern: [b]}
levels:
  fast: {every: 16 tokens}
memories:
  m: {kind: linear, objective: dot, rule: {kind: gd, lr: 0.5}, level: {every: 16 tokens, doc: C}}
cms:
  c: {stages: [{level: fast}, {level: {every: 4 steps}}]}
blocks:
  b: {layers: [{type: memory, memory: m}, {type: cms, cms: c}]}
optimizer: adamw
data: {task: copy}
"""

INLINE_NEST = """\
nestdsl 1
spec mini
model { width 32  depth 1  heads 2  pattern [b] }
level fast every 16 tokens
memory m linear {
  objective dot
  rule gd { lr 0.5 }
  level every 16 tokens "C"
}
cms c chain {
  stage fast
  stage every 4 steps
}
block b {
  memory m
  cms c
}
optimizer "adamw"
data copy
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _graph(spec: object) -> tuple[list, list]:
    g = build_graph(spec)
    return sorted(g.nodes(data=True), key=lambda n: n[0]), sorted(g.edges(keys=True, data=True),
                                                                   key=lambda e: e[:3])


@pytest.mark.parametrize("name,text", [("inline.yaml", INLINE), ("inline.nest", INLINE_NEST)])
def test_an_inline_level_is_the_named_level(name: str, text: str, tmp_path: Path) -> None:
    named = load_spec(_write(tmp_path, "named.yaml", NAMED))
    inline = load_spec(_write(tmp_path, name, text))
    assert inline.memories["m"].level == "m.level"
    assert inline.cms["c"].stages[1].level == "c.stages.1.level"
    assert set(inline.levels) == set(named.levels)
    assert resolve(inline) == resolve(named)
    assert _graph(inline) == _graph(named)


def test_the_hope_preset_with_inline_levels(tmp_path: Path) -> None:
    # the memory and the slow CMS stage of Hope, written inline: same graph as declaring them
    text = (SPECS / "hope.yaml").read_text()
    named = text.replace("  cms_slow: {every: 4 steps}", "  hope_cms.stages.2.level: {every: 4 steps}"
                         ).replace("{level: cms_slow,", "{level: hope_cms.stages.2.level,")
    inline = text.replace("  cms_slow: {every: 4 steps}", "").replace(
        "{level: cms_slow,", "{level: {every: 4 steps},")
    a = load_spec(_write(tmp_path, "named.yaml", named))
    b = load_spec(_write(tmp_path, "inline.yaml", inline))
    assert resolve(a) == resolve(b) and _graph(a) == _graph(b)


def test_fmt_prints_the_named_form_and_round_trips(tmp_path: Path) -> None:
    out = CliRunner().invoke(app, ["fmt", str(_write(tmp_path, "inline.nest", INLINE_NEST))])
    assert out.exit_code == 0, out.output
    assert "level m.level           every 16 tokens  \"C\"" in out.output
    assert "  stage c.stages.1.level" in out.output
    again = load_spec(_write(tmp_path, "again.nest", out.output))
    assert resolve(again) == resolve(load_spec(_write(tmp_path, "named.yaml", NAMED)))


@pytest.mark.parametrize("name,text,old,new,where,message", [
    ("e.yaml", INLINE, "level: {every: 16 tokens, doc: C}", "level: {every: 0 tokens}", (7, 79),
     "'memories.m.level.every' must be >= 1, got 0"),
    ("e.yaml", INLINE, "level: {every: 16 tokens, doc: C}", "level: {evry: 16}", (7, 72),
     "unknown field 'evry' in 'memories.m.level'"),
    ("e.yaml", INLINE, "{level: {every: 4 steps}}", "{level: {every: 12 tokens}}", (9, 47),
     "level 'c.stages.1.level' period 12 tokens does not divide seq_len 128"),
    ("e.nest", INLINE_NEST, "level every 16 tokens", "level every 0 tokens", (8, 15),
     "'memories.m.level.every' must be >= 1, got 0"),
    ("e.nest", INLINE_NEST, "stage every 4 steps", "stage every 12", (12, 15),
     "level 'c.stages.1.level' period 12 tokens does not divide seq_len 128"),
], ids=["yaml-range", "yaml-unknown-field", "yaml-period", "nest-range", "nest-period"])
def test_errors_point_into_the_inline_level(name: str, text: str, old: str, new: str,
                                            where: tuple[int, int], message: str,
                                            tmp_path: Path) -> None:
    assert old in text
    with pytest.raises(SpecError) as e:
        load_spec(_write(tmp_path, name, text.replace(old, new)))
    (d,) = [d for d in e.value.diagnostics if d.message.startswith(message)] or [e.value.diagnostics]
    assert (d.span.file, d.span.line, d.span.col) == (str(tmp_path / name), *where)


def test_a_generated_name_taken_by_a_declared_level_is_an_error(tmp_path: Path) -> None:
    text = INLINE.replace("  fast: {every: 16 tokens}", "  fast: {every: 16 tokens}\n  m.level: {every: 8 tokens}")
    with pytest.raises(SpecError) as e:
        load_spec(_write(tmp_path, "clash.yaml", text))
    (d,) = e.value.diagnostics
    assert d.message == ("the inline level of memory 'm' is named 'm.level', but `levels:` already "
                         "has a level 'm.level' (line 6)")
    assert (d.span.line, d.span.col) == (8, 71)  # the inline mapping


def test_set_reaches_an_inline_level_and_its_lifted_name(tmp_path: Path) -> None:
    path = _write(tmp_path, "inline.yaml", INLINE)
    spec = load_spec(path, overrides=["memories.m.level.every=8 tokens"])
    assert str(spec.levels["m.level"].every) == "8 tokens"
    path = _write(tmp_path, "named.yaml", NAMED)
    spec = load_spec(path, overrides=["levels.m.level.every=8 tokens"])  # a name with a dot
    assert str(spec.levels["m.level"].every) == "8 tokens"
