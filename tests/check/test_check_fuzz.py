"""Property test: random mutations of the shipped presets never crash the front end.

`load_spec` either succeeds or raises `SpecError` whose diagnostics all have a position
(line >= 1, col >= 1) and render; any other exception is a bug. The CLI on mutants exits 0 or 2
and never prints a traceback.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from nestdsl.cli import app
from nestdsl.diagnostics import SpecError
from nestdsl.pipeline import load_spec
from nestdsl.spec.shipped import OPTIMIZER_DIR

SPECS = Path(__file__).resolve().parents[2] / "specs"
# The model presets, and the optimizer specs shipped in the package as if in specs/optim/.
SOURCES = ({p.relative_to(SPECS): p for p in SPECS.rglob("*.yaml")} if SPECS.is_dir() else {}) | {
    Path("optim") / p.name: p for p in OPTIMIZER_DIR.glob("*.yaml")}
PRESETS = sorted(SOURCES)
N_EXAMPLES = int(os.environ.get("NESTDSL_FUZZ_EXAMPLES", "150"))

WORDS = ["", "x", "0", "-1", "1e9", "null", "true", "[", "]", "{", "}", ":", "- ", "'", '"', "&a", "*a",
         "!!str", "#", "|", ">", "%", "@", "tokens", "steps", "mlp", "dgd", "16 tokens", "~", "\t",
         "memory", "level", "kind", "99999999999999999999", ".nan", "2024-13-45", "<<", "?"]
JUNK = [b"\x00", b"\xff\xfe", b"\x89PNG", b"\xc3", b"\x1b[31m", b"\r", b"\x85", "\u2028".encode()]


@st.composite
def mutation(draw: st.DrawFn) -> tuple[Path, bytes]:
    """A preset and its text after 1-3 random edits."""
    rel = draw(st.sampled_from(PRESETS))
    lines = SOURCES[rel].read_bytes().split(b"\n")
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["delete", "duplicate", "indent", "token", "truncate", "junk", "swap"]))
        i = draw(st.integers(0, max(0, len(lines) - 1)))
        if op == "delete" and len(lines) > 1:
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "indent":
            delta = draw(st.integers(-4, 4))
            stripped = lines[i].lstrip(b" ")
            lines[i] = b" " * max(0, len(lines[i]) - len(stripped) + delta) + stripped
        elif op == "token":
            toks = lines[i].split(b" ")
            j = draw(st.integers(0, len(toks) - 1))
            toks[j] = draw(st.sampled_from(WORDS + [str(draw(st.integers(-5, 5000)))])).encode()
            lines[i] = b" ".join(toks)
        elif op == "truncate":
            text = b"\n".join(lines)
            lines = text[: draw(st.integers(0, len(text)))].split(b"\n")
        elif op == "junk":
            line = lines[i]
            k = draw(st.integers(0, len(line)))
            lines[i] = line[:k] + draw(st.sampled_from(JUNK)) + line[k:]
        elif op == "swap" and len(lines) > 1:
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
    return rel, b"\n".join(lines)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A scratch copy of specs/ (the shipped optimizer specs as specs/optim/) to write mutants in.
    root = tmp_path_factory.mktemp("specs")
    shutil.copytree(SPECS, root / "specs")
    shutil.copytree(OPTIMIZER_DIR, root / "specs" / "optim")
    return root / "specs"


def _write(workdir: Path, rel: Path, data: bytes) -> Path:
    path = workdir / rel.parent / f"mutant{rel.suffix}"
    path.write_bytes(data)
    return path


pytestmark = pytest.mark.skipif(not PRESETS, reason="no presets in specs/")


@settings(max_examples=N_EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=mutation())
def test_mutations_raise_only_spec_errors(workdir: Path, case: tuple[Path, bytes]) -> None:
    rel, data = case
    path = _write(workdir, rel, data)
    try:
        load_spec(path)
    except SpecError as e:
        assert e.diagnostics, "SpecError without diagnostics"
        for d in e.diagnostics:
            assert d.span.line >= 1 and d.span.col >= 1, d
            assert d.message
        e.render()
        e.to_json()


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=mutation())
def test_cli_on_mutations(workdir: Path, case: tuple[Path, bytes]) -> None:
    rel, data = case
    path = _write(workdir, rel, data)
    result = CliRunner().invoke(app, ["check", str(path)])
    assert result.exit_code in (0, 2), result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
