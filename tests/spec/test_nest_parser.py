"""The `.nest` parser: same document as YAML, positions for every node, readable syntax errors."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nestdsl.diagnostics import SpecError
from nestdsl.pipeline import load_spec
from nestdsl.spec import parse_text
from nestdsl.spec.nest_parser import grammar_text, nest_lark, parse_nest

ROOT = Path(__file__).resolve().parents[2]
HOPE_NEST = (ROOT / "specs" / "hope.nest").read_text()

SMALL = """\
# a comment
nestdsl 1
spec tiny "a tiny spec"
model { width 32  depth 1  heads 2  pattern [b] }
level c every 16 tokens
level slow every 4 steps "outer level"
memory m linear {
  objective l2
  rule gd { lr 0.5 }
  level c
}
block b {
  memory m  conv 0
  mlp hidden 2
}
"""

SMALL_YAML = """\
nestdsl: 1
name: tiny
doc: a tiny spec
model: {width: 32, depth: 1, heads: 2, pattern: [b]}
levels:
  c: {every: 16 tokens}
  slow: {every: 4 steps, doc: outer level}
memories:
  m: {kind: linear, objective: l2, rule: {kind: gd, lr: 0.5}, level: c}
blocks:
  b:
    layers:
      - {type: memory, memory: m, conv: 0}
      - {type: mlp, hidden: 2}
"""


def _error(text: str, file: str = "t.nest") -> SpecError:
    with pytest.raises(SpecError) as e:
        parse_text(text, file, "nest")
    return e.value


def test_the_package_reads_the_one_grammar_file() -> None:
    repo = Path(__file__).resolve().parents[2] / "grammars" / "nest.lark"
    assert grammar_text() == repo.read_text(encoding="utf-8")
    packaged = Path(__file__).resolve().parents[2] / "nestdsl" / "grammars" / "nest.lark"
    assert packaged.is_symlink() and packaged.resolve() == repo.resolve()   # nothing to sync


def test_same_document_as_yaml() -> None:
    nest_doc, nest_spec = parse_text(SMALL, "s.nest", "nest")
    yaml_doc, yaml_spec = parse_text(SMALL_YAML, "s.yaml", "yaml")
    assert nest_doc.data == yaml_doc.data
    assert nest_spec == yaml_spec
    assert nest_doc.syntax == "nest"


def test_positions_of_nodes_and_keys() -> None:
    doc = parse_nest(SMALL, "s.nest")
    pos = doc.positions
    assert (pos[("name",)].line, pos[("name",)].col) == (3, 6)
    assert (pos[("model", "width")].line, pos[("model", "width")].col) == (4, 15)
    assert (doc.key_positions[("model", "width")].line, doc.key_positions[("model", "width")].col) == (4, 9)
    assert (pos[("model", "pattern", 0)].line, pos[("model", "pattern", 0)].col) == (4, 46)
    assert (pos[("levels", "c", "every")].line, pos[("levels", "c", "every")].col) == (5, 15)
    assert pos[("levels", "c", "every")].end_col == 24  # the whole `16 tokens`
    assert (pos[("levels", "slow", "doc")].line, pos[("levels", "slow", "doc")].col) == (6, 26)
    assert (doc.key_positions[("memories", "m")].line, doc.key_positions[("memories", "m")].col) == (7, 8)
    assert (pos[("memories", "m", "kind")].line, pos[("memories", "m", "kind")].col) == (7, 10)
    assert (pos[("memories", "m", "rule", "lr")].line, pos[("memories", "m", "rule", "lr")].col) == (9, 16)
    assert (pos[("blocks", "b", "layers", 1)].line, pos[("blocks", "b", "layers", 1)].col) == (14, 3)
    assert (pos[("blocks", "b", "layers", 0, "conv")].line, pos[("blocks", "b", "layers", 0, "conv")].col) == (13, 18)


def test_ir_spans_point_into_the_nest_file() -> None:
    _, spec = parse_text(SMALL, "s.nest", "nest")
    assert str(spec.memories["m"].span) == "s.nest:7:8"
    assert spec.blocks["b"].layers[1].span is not None and spec.blocks["b"].layers[1].span.line == 14
    assert spec.levels["c"].every.span is not None and spec.levels["c"].every.span.line == 5


@pytest.mark.parametrize(
    "old, new, line, col, message",
    [
        ("width 32", 'width "32x"', 4, 15, "invalid value for 'model.width'"),
        ("width 32", "widht 32", 4, 9, "unknown field 'widht'"),
        ("every 4 steps", "every 0 steps", 6, 18, "'levels.slow.every' must be >= 1"),
        ("lr 0.5", "lr -1 momentum learned tanh", 9, 36, "invalid value 'tanh'"),
        ("mlp hidden 2", "mlp hidden 0", 14, 14, "'blocks.b.layers[1].hidden' must be >= 1"),
        ("memory m linear", "memory m linaer", 7, 10, "unknown kind 'linaer'"),
    ],
)
def test_validation_errors_point_at_the_nest_source(old: str, new: str, line: int, col: int, message: str) -> None:
    err = _error(SMALL.replace(old, new, 1))
    hits = [d for d in err.diagnostics if message in d.message]
    assert hits, [d.message for d in err.diagnostics]
    assert (hits[0].span.line, hits[0].span.col) == (line, col), hits[0]


def test_misspelled_field_gets_did_you_mean() -> None:
    err = _error(SMALL.replace("width 32", "widht 32"))
    (d,) = [d for d in err.diagnostics if "widht" in d.message]
    assert d.hint is not None and "did you mean 'width'" in d.hint


def test_semantic_check_points_at_the_nest_source(tmp_path: Path) -> None:
    path = tmp_path / "bad.nest"
    path.write_text(SMALL.replace("  level c\n", "  level cc\n"))
    with pytest.raises(SpecError) as e:
        load_spec(path)
    hits = [d for d in e.value.diagnostics if "cc" in d.message]
    assert hits, [d.message for d in e.value.diagnostics]
    assert (hits[0].span.file, hits[0].span.line, hits[0].span.col) == (str(path), 10, 9)


# ---------------------------------------------------------------------------------------------
# Syntax errors


@pytest.mark.parametrize(
    "text, line, col, message, hint",
    [
        ("spec x\nmemroy m linear\n", 2, 1, "unexpected 'memroy'", "did you mean 'memory'?"),
        ("spec x\nmodel { width 3 } }\n", 2, 19, "unexpected '}'", "expected one of:"),
        ('spec x "unclosed doc\nmodel { width 3 }\n', 1, 8, "string is not closed", "closing"),
        ("spec x\nmodel { width 3\n", 2, 16, "unexpected end of file", "'{' opened at line 2 is not closed"),
        ("spec x\nmemory m linear { rul gd { lr 1 } }\n", 2, 26, "unexpected '{'", "did you mean 'rule'?"),
        ("spec x\nblock b { memroy m }\n", 2, 11, "unexpected 'memroy'", "did you mean 'memory'?"),
        ("spec x\nblock b { mlp  self_modifyng m }\n", 2, 16, "unknown field 'self_modifyng'", "'self_modifying'"),
        ("spec x\nmodel { width @3 }\n", 2, 15, "unexpected '@'", "expected one of:"),
        ("spec x\nmemory m mlp(depth 2 hidden 2)\n", 2, 22, "unexpected 'hidden'", "')', ','"),
        ("spec x\nlevel c 16 tokens\n", 2, 9, "unexpected number 16, expected 'every'", None),
        ('spec "x\\q"\n', 1, 6, "invalid escape '\\q'", None),
        ("spec x\nmemory m linear\nmemory m mlp\n", 3, 8, "duplicate memory 'm'", "first defined at line 2"),
        ("spec x\nmodel { width 1 }\nmodel { width 2 }\n", 3, 1, "duplicate model section", "line 2"),
        ("spec x\nmodel { width 1  width 2 }\n", 2, 18, "duplicate field 'width'", "line 2"),
        ("spec x\nmemory m mlp(depth 2) { depth 3 }\n", 2, 25, "duplicate field 'depth'", None),
        ("spec x\nspec y\n", 2, 1, "duplicate `spec` line", None),
        ("# only a comment\n", 1, 1, "empty spec", None),
        ("\x00\x01binary", 1, 1, "unexpected", None),
    ],
)
def test_syntax_errors(text: str, line: int, col: int, message: str, hint: str | None) -> None:
    err = _error(text)
    d = err.diagnostics[0]
    assert message in d.message, d
    assert (d.span.file, d.span.line, d.span.col) == ("t.nest", line, col), d
    if hint is not None:
        assert d.hint is not None and hint in d.hint, d
    rendered = err.render()
    assert rendered.startswith(f"t.nest:{line}:{col}: error: ")
    assert "Traceback" not in rendered


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_mutated_nest_raises_only_spec_errors(data: st.DataObject) -> None:
    text = HOPE_NEST
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(text)))
        action = data.draw(st.sampled_from(["delete", "insert", "replace"]))
        junk = data.draw(st.sampled_from(['"', "{", "}", "(", ")", "[", "]", ",", "#", "x", "1", "-", " ", "\n", "é", "\x00", "learned"]))
        n = data.draw(st.integers(1, 12))
        if action == "delete":
            text = text[:i] + text[i + n:]
        elif action == "insert":
            text = text[:i] + junk + text[i:]
        else:
            text = text[:i] + junk + text[i + n:]
    try:
        parse_text(text, "m.nest", "nest")
    except SpecError as e:
        assert e.diagnostics and all(d.span.file == "m.nest" and d.span.line >= 1 for d in e.diagnostics)


# ---------------------------------------------------------------------------------------------
# Language details


def test_keywords_are_names_where_a_name_is_expected() -> None:
    text = """\
spec memory
model { width 8  depth 1  pattern [cms] }
level token every 1 token
level level every 2 tokens
memory mlp mlp(depth 2, residual) { level level  rule dgd(lr 0.1) level2 x }
memory level linear { rule gd { lr 1 } level token }
cms stage chain { stage level  hidden 2  stage token }
block cms {
  memory mlp
  cms stage  norm layer
  mlp
  memory level
}
"""
    text = text.replace(" level2 x", "")
    doc = parse_nest(text, "k.nest")
    d = doc.data
    assert d["name"] == "memory"
    assert d["memories"]["mlp"] == {"kind": "mlp", "depth": 2, "residual": True, "level": "level", "rule": {"kind": "dgd", "lr": 0.1}}
    assert d["memories"]["level"]["level"] == "token"
    assert d["cms"]["stage"]["stages"] == [{"level": "level", "hidden": 2}, {"level": "token"}]
    assert [layer["type"] for layer in d["blocks"]["cms"]["layers"]] == ["memory", "cms", "mlp", "memory"]
    parse_text(text, "k.nest", "nest")  # and it validates


def test_value_forms() -> None:
    text = """\
spec "name with spaces" ; # separators are optional
doc "line one\\nline \\"two\\" \\u00e9"
level a every "3 steps"
level b every 16
memory m mlp(depth 3, residual, activation gelu,) {
  rule dgd {
    lr learned softplus scale 2.5e-3 init 1e-08,
    retention -0.5; momentum null
  }
}
optimizer muon {
  lr 2e-2  beta 0.95
  group vectors { type adamw  lr 3e-3 }
  group embeddings(type adamw, weight_decay 0)
}
data continual {
  switch_every 50
  task mqar { num_pairs 4 }
  task copy(length 8)
  seed -3
}
train(steps 10, grad_clip null, compile false)
"""
    text = text.replace(" ; # separators are optional", "  # separators are optional")
    d = parse_nest(text, "v.nest").data
    assert d["name"] == "name with spaces"
    assert d["doc"] == 'line one\nline "two" é'
    assert d["levels"] == {"a": {"every": "3 steps"}, "b": {"every": 16}}
    assert d["memories"]["m"]["rule"] == {
        "kind": "dgd",
        "lr": {"learned": "softplus", "scale": 2.5e-3, "init": 1e-08},
        "retention": -0.5,
        "momentum": None,
    }
    assert d["optimizer"]["groups"] == [
        {"params": "vectors", "type": "adamw", "lr": 3e-3},
        {"params": "embeddings", "type": "adamw", "weight_decay": 0},
    ]
    assert d["data"]["tasks"] == [{"task": "mqar", "num_pairs": 4}, {"task": "copy", "length": 8}]
    assert d["data"]["seed"] == -3
    assert d["train"] == {"steps": 10, "grad_clip": None, "compile": False}
    _, spec = parse_text(text, "v.nest", "nest")
    assert spec.data is not None and spec.data.task == "continual"


def test_parsing_a_preset_takes_milliseconds() -> None:
    nest_lark()  # built once per process
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        parse_nest(HOPE_NEST, "hope.nest")
        times.append(time.perf_counter() - t0)
    assert sorted(times)[2] < 0.05, times


def test_front_end_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from nestdsl.spec import parse_file\n"
        "from nestdsl.spec.printer import print_spec\n"
        f"_, s = parse_file({str(ROOT / 'specs' / 'hope.nest')!r})\n"
        "print_spec(s, 'yaml'); print_spec(s, 'nest')\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
