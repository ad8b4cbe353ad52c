"""Checker warnings (issue #20 item 4): a Titans-style mlp memory written with the library
defaults (rule.lr 1, no clip) diverges at the first step; the checker says so, positioned, with
the fields and values the presets use. Warnings never stop a spec, and no preset gets one."""

from __future__ import annotations

import textwrap
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nestdsl.check import check_spec, collect_diagnostics
from nestdsl.cli import app
from nestdsl.diagnostics import SpecWarning
from nestdsl.pipeline import load_spec
from nestdsl.spec import parse_text

REPO = Path(__file__).resolve().parents[2]

TITANS = textwrap.dedent("""\
    nestdsl: 1
    name: my-titans
    model: {vocab: 256, width: 64, depth: 2, heads: 4, pattern: [block]}
    levels:
      chunk: {every: 16 tokens}
    memories:
      titans:
        kind: mlp
        objective: l2
        rule: {RULE}
        level: chunk
    blocks:
      block:
        layers: [{type: memory, memory: titans}, {type: mlp, hidden: 4}]
    optimizer: {type: adamw, lr: 0.003}
    data: {task: mqar, seq_len: 128, batch: 8}
    """)


def spec_warnings(rule: str, memory_extra: str = "") -> list[SpecWarning]:
    text = TITANS.replace("{RULE}", rule)
    if memory_extra:
        text = text.replace("    kind: mlp\n", f"    kind: mlp\n    {memory_extra}\n")
        assert memory_extra in text
    doc, spec = parse_text(text, "my-titans.yaml")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_spec(spec, doc)
    return [w.message for w in caught if isinstance(w.message, SpecWarning)]


def test_library_defaults_warn_with_the_fields_and_the_presets_values() -> None:
    (w,) = spec_warnings("{kind: gd, lr: {learned: sigmoid}, momentum: {learned: sigmoid}}")
    d = w.diagnostic
    assert d.severity == "warning" and d.code == "stability"
    assert (d.span.file, d.span.line) == ("my-titans.yaml", 10)          # at rule.lr
    assert "mlp memory 'titans' may diverge at the first step" in d.message
    assert "rule.lr.scale = 1" in d.message and "no rule.clip" in d.message
    assert "rule.lr.scale: 0.1" in d.hint and "rule.clip: 1.0" in d.hint
    assert str(w).startswith("my-titans.yaml:10:")
    assert "warning:" in str(w) and "^" in str(w)                          # rendered like an error


@pytest.mark.parametrize(("rule", "extra", "expect"), [
    ("{kind: gd}", "", ["rule.lr = 1", "no rule.clip"]),                         # every default
    ("{kind: gd, clip: 1.0, lr: {learned: sigmoid}}", "", ["rule.lr.scale = 1"]),  # state 1e7
    ("{kind: gd, lr: {learned: sigmoid, scale: 0.1}}", "", ["no rule.clip"]),     # NaN at step 1
    ("{kind: gd, lr: 0.5, clip: 1.0}", "", ["rule.lr = 0.5"]),
])
def test_each_unbounded_step_is_named(rule: str, extra: str, expect: list[str]) -> None:
    (w,) = spec_warnings(rule, extra)
    for fragment in expect:
        assert fragment in w.diagnostic.message
    if len(expect) == 1:
        other = "no rule.clip" if "lr" in expect[0] else "rule.lr"
        assert other not in w.diagnostic.message


@pytest.mark.parametrize(("rule", "extra"), [
    ("{kind: gd, clip: 1.0, lr: {learned: sigmoid, scale: 0.1}}", ""),          # the presets
    ("{kind: gd, clip: 1.0, lr: 0.002}", ""),
    ("{kind: gd, clip: 1.0, lr: {learned: sigmoid}, lr_per_dim: true}", ""),     # scale/ presets
    ("{kind: gd, lr: {learned: sigmoid, scale: 0.1}, lr_per_dim: true}", "norm: true"),  # TTT
])
def test_bounded_steps_do_not_warn(rule: str, extra: str) -> None:
    assert spec_warnings(rule, extra) == []


def test_linear_and_dot_memories_do_not_warn() -> None:
    text = TITANS.replace("{RULE}", "{kind: gd, lr: 1.0}")
    for a, b in (("kind: mlp", "kind: linear"), ("objective: l2", "objective: dot")):
        doc, spec = parse_text(text.replace(a, b), "x.yaml")
        assert [d for d in collect_diagnostics(spec, doc, include_warnings=True)
                if d.severity == "warning"] == []


def test_warnings_stay_out_of_the_error_list_and_never_stop_a_spec() -> None:
    doc, spec = parse_text(TITANS.replace("{RULE}", "{kind: gd}"), "x.yaml")
    assert collect_diagnostics(spec, doc) == []           # what validation and goldens see
    assert [d.severity for d in collect_diagnostics(spec, doc, include_warnings=True)] == ["warning"]


def test_no_preset_warns() -> None:
    files = sorted(p for p in (REPO / "specs").rglob("*") if p.suffix in (".yaml", ".nest"))
    assert files
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for f in files:
            load_spec(f)
    assert [str(w.message) for w in caught if issubclass(w.category, SpecWarning)] == []


def test_cli_check_prints_the_warning_like_an_error_and_exits_0(tmp_path: Path) -> None:
    spec = tmp_path / "my-titans.yaml"
    spec.write_text(TITANS.replace("{RULE}", "{kind: gd, lr: {learned: sigmoid}}"))
    r = CliRunner().invoke(app, ["check", str(spec)])
    assert r.exit_code == 0, r.output
    assert f"{spec}:10:" in r.output and "warning: mlp memory 'titans' may diverge" in r.output
    assert "hint: set rule.lr.scale: 0.1 and rule.clip: 1.0" in r.output
    assert "SpecWarning" not in r.output                   # not Python's warning format
    assert "1 spec valid" in r.output
