"""Golden-file tests of `nestdsl check` error messages.

Each bad spec `golden/<case>.yaml` (or `.nest`) sits next to `golden/<case>.yaml.expected`, the
exact text `nestdsl check <case>.yaml` prints on stderr (run from inside `golden/`, so paths are
relative). Cases whose input is binary are generated here (GENERATED) and run from a temp folder,
as is a file that does not exist (ABSENT); a few cases are checked with options (ARGS). Together
the cases emit every diagnostic code `nestdsl check` reports (nestdsl/codes.py).

Regenerate the expected files after an intended message change with

    NESTDSL_UPDATE_GOLDEN=1 .venv/bin/pytest tests/check/test_check_golden.py

and review the diff like code.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nestdsl.cli import app
from nestdsl.codes import CODES, Code

GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE = os.environ.get("NESTDSL_UPDATE_GOLDEN") == "1"


def _junk() -> bytes:
    rng = random.Random(1234)  # fixed: the expected output depends on the bytes
    return b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(rng.randrange(256) for _ in range(200))


# Inputs written as bytes by the test (binary content does not belong in a text golden file).
GENERATED: dict[str, bytes] = {
    "binary_junk.yaml": _junk(),
    "invalid_utf8.yaml": b"nestdsl: 1\nname: caf\xe9\nmodel: {width: 64}\n",
    "nul_byte.yaml": b"nestdsl: 1\nname: mini\x00\n",
    "control_char.yaml": b"nestdsl: 1\nname: mini\x07bell\n",
    "utf8_bom_tab.yaml": "\ufeffnestdsl: 1\n\tname: x\n".encode(),
}

# Checked in an empty temp folder: the file is missing.
ABSENT = {"no_such_file.yaml"}

# Options a case is checked with (before the file name).
ARGS: dict[str, list[str]] = {
    "override_into_scalar.yaml": ["--set", "name.first=x"],
}

FILE_CASES = sorted(p.name for p in GOLDEN.iterdir() if p.suffix in (".yaml", ".yml", ".nest") and p.is_file())
CASES = FILE_CASES + sorted(GENERATED) + sorted(ABSENT)


def _run_check(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *extra: str):
    if name in GENERATED or name in ABSENT:
        if name in GENERATED:
            (tmp_path / name).write_bytes(GENERATED[name])
        monkeypatch.chdir(tmp_path)
    else:
        monkeypatch.chdir(GOLDEN)
    return CliRunner().invoke(app, ["check", *ARGS.get(name, []), *extra, name])


def test_enough_cases() -> None:
    assert len(CASES) >= 35


@pytest.mark.parametrize("name", CASES)
def test_golden(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = _run_check(name, tmp_path, monkeypatch)
    assert result.exit_code == 2, result.output
    text = result.stderr
    assert "Traceback" not in result.output
    # Compiler format: the first line is file:line:col: error: message.
    first = text.splitlines()[0]
    file, line, col, rest = first.split(":", 3)
    assert int(line) >= 1 and int(col) >= 1 and rest.startswith(" error: ")
    expected = GOLDEN / f"{name}.expected"
    if UPDATE or not expected.exists():
        if not UPDATE:
            pytest.fail(f"no {expected.name}; run with NESTDSL_UPDATE_GOLDEN=1 to create it")
        expected.write_text(text)
    assert text == expected.read_text()


@pytest.mark.parametrize("name", ["many_errors.yaml", "binary_junk.yaml", "reference_cycle.yaml"])
def test_json_output(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = _run_check(name, tmp_path, monkeypatch, "--json")
    assert result.exit_code == 2
    diags = json.loads(result.stdout)
    assert diags and all(d["line"] >= 1 and d["column"] >= 1 and d["file"] == name for d in diags)
    assert all(d["severity"] == "error" and d["message"] for d in diags)
    # Sorted by position.
    assert [(d["line"], d["column"]) for d in diags] == sorted((d["line"], d["column"]) for d in diags)


def test_golden_cases_cover_the_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every code the golden cases emit (`--json`) is a registry code, and every error code
    `nestdsl check` reports has a golden case. The registry's other codes (a warning, lowering's)
    are triggered through the Python API in test_codes.py."""
    emitted: dict[str, str] = {}
    for name in CASES:
        result = _run_check(name, tmp_path, monkeypatch, "--json")
        assert result.exit_code == 2, (name, result.output)
        for d in json.loads(result.stdout):
            emitted.setdefault(d["code"], name)
    assert set(emitted) <= {c.value for c in Code}, emitted
    by_check = {c.value for c, info in CODES.items() if info.by_check and info.severity == "error"}
    assert by_check - set(emitted) == set(), "codes without a golden case"


def test_several_files_all_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(GOLDEN)
    result = CliRunner().invoke(app, ["check", "tabs.yaml", "unused_memory.yaml", "heads_not_dividing.yaml"])
    assert result.exit_code == 2
    for f in ("tabs.yaml:", "unused_memory.yaml:", "heads_not_dividing.yaml:"):
        assert f in result.stderr
    assert result.stderr.rstrip().endswith("3 errors")


def test_shared_optimizer_errors_reported_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(GOLDEN)
    result = CliRunner().invoke(app, ["check", "optimizer_ref_broken.yaml", "lib/broken_optim.yaml"])
    assert result.exit_code == 2
    assert result.stderr.count("lib/broken_optim.yaml:5:7:") == 1


def test_missing_file_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["check", "nope.yaml"])
    assert result.exit_code == 2
    assert "nope.yaml:1:1: error: no such file" in result.stderr


def test_internal_error_exits_1(monkeypatch: pytest.MonkeyPatch) -> None:
    import nestdsl.pipeline

    def boom(path: object, **kw: object) -> None:
        raise RuntimeError("checker bug")

    monkeypatch.setattr(nestdsl.pipeline, "load_spec", boom)
    result = CliRunner().invoke(app, ["check", str(GOLDEN / "tabs.yaml")])
    assert result.exit_code == 1
    assert "internal error" in result.stderr and "Traceback" not in result.output


def test_valid_spec_exits_0(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = (GOLDEN / "unused_memory.yaml").read_text()
    start = text.index("  spare:")
    end = text.index("cms:\n")
    (tmp_path / "ok.yaml").write_text(text[:start] + text[end:])
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["check", "ok.yaml"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["check", "--json", "ok.yaml"])
    assert result.exit_code == 0 and json.loads(result.stdout) == []
