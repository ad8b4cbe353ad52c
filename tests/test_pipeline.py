"""The compiler's stages (nestdsl/pipeline.py): parse -> check -> resolve -> lower.

Each package imports only the stages before it (no hidden loop: `spec/` never imports `check/`,
`check/` is a leaf over `spec/`); the resolve stage decides every chunk size once; the lowering
checks a spec that has not been checked and otherwise never re-validates.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

from nestdsl.diagnostics import SpecError
from nestdsl.pipeline import ensure_checked, load_spec, resolve_spec
from nestdsl.spec import ir, parse_text

PACKAGE = Path(__file__).resolve().parents[1] / "nestdsl"
SPECS = PACKAGE.parent / "specs"

# What each front-end package may import from nestdsl (anywhere in a module, functions included).
ALLOWED = {
    "spec": {"spec", "diagnostics", "vocabulary", "errors", "codes"},
    "check": {"check", "spec", "diagnostics", "vocabulary", "errors", "codes"},
}


def _nestdsl_imports(path: Path) -> set[str]:
    """The first-level nestdsl packages/modules a file imports, at any depth of its code."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
        out.update(n.split(".")[1] for n in names if n.startswith("nestdsl.") and n.count(".") >= 1)
    return out


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_front_end_packages_import_only_earlier_stages(package: str) -> None:
    for path in sorted((PACKAGE / package).rglob("*.py")):
        extra = _nestdsl_imports(path) - ALLOWED[package]
        assert not extra, f"{path.relative_to(PACKAGE.parent)} imports nestdsl.{sorted(extra)}"


def test_resolve_decides_every_chunk_size_once() -> None:
    spec = load_spec(SPECS / "hope.yaml")
    resolved = resolve_spec(spec)
    parametric = {n for n, m in resolved.spec.memories.items() if isinstance(m, ir.ParametricMemory)}
    assert set(resolved.chunk_sizes) == parametric and parametric
    for name in parametric:
        period = spec.level_period(spec.memories[name].level)
        assert resolved.chunk_size(name) == period.every and period.unit == "tokens"
        assert resolved.shape.seq_len % resolved.chunk_size(name) == 0     # in-context (checker)


MINI = textwrap.dedent("""\
    nestdsl: 1
    name: mini
    model: {vocab: 32, width: 16, depth: 1, heads: 2, pattern: [b]}
    memories:
      m: {kind: linear, objective: l2, heads: 3, rule: {kind: gd, lr: 0.5}}
    blocks:
      b:
        layers:
          - {type: memory, memory: m}
    """)


def test_a_parsed_spec_is_checked_against_its_own_document() -> None:
    _, spec = parse_text(MINI, "mini.yaml")
    assert not spec._checked
    with pytest.raises(SpecError) as ei:
        ensure_checked(spec)
    (d,) = ei.value.diagnostics
    assert (d.span.file, d.span.line) == ("mini.yaml", 5) and "3 heads do not divide" in d.message


def test_a_python_built_spec_is_checked_against_its_canonical_yaml() -> None:
    _, parsed = parse_text(MINI, "mini.yaml")
    spec = ir.Spec.model_validate(parsed.model_dump(exclude_unset=True))   # no document behind it
    with pytest.raises(SpecError) as ei:
        ensure_checked(spec)
    (d,) = ei.value.diagnostics
    assert d.span.file == "<python spec 'mini'>" and "heads: 3" in ei.value.render()


def test_a_checked_spec_is_not_checked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = load_spec(SPECS / "hope.yaml")
    import nestdsl.pipeline as pipeline

    monkeypatch.setattr(pipeline, "check_spec", lambda *a, **k: pytest.fail("checked twice"))
    assert ensure_checked(spec) is spec


def test_validation_errors_come_with_the_semantic_problems_of_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "two.yaml"
    path.write_text(MINI.replace("memories:\n", "memories:\n  x: {kind: linear, bogus: 1}\n"))
    with pytest.raises(SpecError) as ei:
        load_spec(path)
    messages = " | ".join(d.message for d in ei.value.diagnostics)
    assert "bogus" in messages and "3 heads do not divide" in messages, messages
