"""The registry of diagnostic codes (nestdsl/codes.py): complete, used everywhere a diagnostic is
built, and every code reachable. `nestdsl check`'s codes have golden cases
(test_check_golden.py::test_golden_cases_cover_the_registry); the others are triggered here."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nestdsl.cli import app
from nestdsl.codes import CODES, Code, explain
from nestdsl.diagnostics import Diagnostic, Span

REPO = Path(__file__).resolve().parents[2]


def test_every_code_has_a_summary_and_a_fix() -> None:
    assert set(CODES) == set(Code)
    for code, info in CODES.items():
        assert info.summary and info.fix and "\n" not in info.summary + info.fix, code
        assert info.severity in ("error", "warning"), code
        assert code.value == code.value.lower() and " " not in code.value


def _code_args(call: ast.Call) -> list[ast.expr]:
    """The code a diagnostic-building call passes: `code=` of Diagnostic / spec_error, the fourth
    positional argument of the checker's `ctx.add(path, message, hint, code)`."""
    f = call.func
    name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
    out = [kw.value for kw in call.keywords if kw.arg == "code" and name in ("Diagnostic", "spec_error", "add")]
    if name == "add" and isinstance(f, ast.Attribute) and ast.unparse(f.value) in ("ctx", "self") \
            and len(call.args) >= 4:
        out.append(call.args[3])
    return out


def test_diagnostics_are_built_with_registry_codes() -> None:
    """Every construction site names a member (`Code.X`), not a string; the two helpers that
    pass their own `code` parameter along are the only exceptions."""
    seen: set[str] = set()
    for path in sorted((REPO / "nestdsl").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            for arg in _code_args(node):
                where = f"{path.relative_to(REPO)}:{arg.lineno}: {ast.unparse(arg)}"
                if isinstance(arg, ast.Name) and arg.id == "code":
                    continue                     # ctx.add / spec_error forwarding their parameter
                assert isinstance(arg, ast.Attribute) and ast.unparse(arg.value) == "Code", where
                assert arg.attr in Code.__members__, where
                seen.add(arg.attr)
    # spec_error's default (Code.LOWER) is the lowering's code.
    assert set(Code.__members__) - seen <= {"LOWER"}


def test_a_code_outside_the_registry_is_refused() -> None:
    span = Span("x.yaml", 1, 1)
    assert Diagnostic(span, "m", code="syntax").code is Code.SYNTAX
    with pytest.raises(ValueError):
        Diagnostic(span, "m", code="spec")            # the old default: no such code
    with pytest.raises(TypeError):
        Diagnostic(span, "m")                          # type: ignore[call-arg]


def test_other_pydantic_errors_are_value_errors() -> None:
    """A pydantic error type the validator has no message for keeps pydantic's words and gets
    the registry's `value` code (no spec reaches it today: the IR uses no such constraint)."""
    from nestdsl.spec import parse_document
    from nestdsl.spec.validate import _one

    doc = parse_document("nestdsl: 1\nname: x\nmodel: {width: 60, depth: 1, pattern: [b]}\n",
                         "x.yaml", "yaml")
    err = {"type": "multiple_of", "loc": ("model", "width"), "msg": "Input should be a multiple of 8",
           "input": 60, "ctx": {"multiple_of": 8}}
    d = _one(err, doc)  # type: ignore[arg-type]
    assert d.code is Code.VALUE
    assert d.message == "'model.width': Input should be a multiple of 8"
    assert (d.span.line, d.span.col) == (3, 16)


# --- codes `nestdsl check --json` does not print: a warning, and the lowering's


def test_stability_warning() -> None:
    from nestdsl.check import collect_diagnostics
    from nestdsl.spec import parse_text

    doc, spec = parse_text(textwrap.dedent("""\
        nestdsl: 1
        name: t
        model: {width: 64, depth: 1, heads: 4, pattern: [b]}
        levels: {chunk: {every: 16 tokens}}
        memories:
          m: {kind: mlp, objective: l2, rule: {kind: gd}, level: chunk}
        blocks: {b: {layers: [{type: memory, memory: m}]}}
        """), "t.yaml")
    codes = {d.code for d in collect_diagnostics(spec, doc, include_warnings=True)}
    assert codes == {Code.STABILITY} and CODES[Code.STABILITY].severity == "warning"


def test_lowering_codes(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    import nestdsl
    from nestdsl.diagnostics import SpecError
    from nestdsl.lower.size import LIMIT_ENV

    with pytest.raises(SpecError) as e:                # an optimizer-only spec has no model
        nestdsl.compile(str(REPO / "nestdsl" / "optim" / "specs" / "adamw.yaml"), compile=False)
    assert [d.code for d in e.value.diagnostics] == [Code.LOWER]
    monkeypatch.setenv(LIMIT_ENV, "0.0001")
    with pytest.raises(SpecError) as e:
        nestdsl.compile(str(REPO / "specs" / "transformer.yaml"), compile=False)
    assert [d.code for d in e.value.diagnostics] == [Code.SIZE]
    assert not (CODES[Code.LOWER].by_check or CODES[Code.SIZE].by_check)


# --- nestdsl codes


def test_cli_lists_and_explains_codes() -> None:
    listed = CliRunner().invoke(app, ["codes"])
    assert listed.exit_code == 0, listed.output
    rows = listed.stdout.splitlines()
    assert len(rows) == len(Code) and all(any(r.split()[0] == c.value for r in rows) for c in Code)
    one = CliRunner().invoke(app, ["codes", "unknown-ref"])
    assert one.exit_code == 0 and one.stdout == explain(Code.UNKNOWN_REF) + "\n"
    bad = CliRunner().invoke(app, ["codes", "unknown-refs"])
    assert bad.exit_code == 2 and "did you mean 'unknown-ref'?" in bad.stderr
