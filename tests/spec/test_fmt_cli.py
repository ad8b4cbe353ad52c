"""`nestdsl fmt X -o X` would drop every comment of X: it is refused (exit 2, one line saying
why) unless `--force`, whatever the spelling of the output path (a symlink, `./`, `..`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nestdsl.cli import app

SPECS = Path(__file__).resolve().parents[2] / "specs"


@pytest.fixture
def spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    path = tmp_path / "hope.yaml"
    path.write_text((SPECS / "hope.yaml").read_text())
    os.symlink(path, tmp_path / "link.yaml")
    return path


SAME: dict[str, Callable[[Path], tuple[str, str]]] = {
    "same-path": lambda p: (str(p), str(p)),
    "relative-spelling": lambda p: ("hope.yaml", "sub/../hope.yaml"),
    "dot-slash": lambda p: (str(p), "./hope.yaml"),
    "symlink-as-output": lambda p: ("hope.yaml", "link.yaml"),
    "symlink-as-input": lambda p: ("link.yaml", str(p)),
}


@pytest.mark.parametrize("case", SAME)
def test_writing_over_the_input_is_refused(case: str, spec: Path) -> None:
    before = spec.read_text()
    src, out = SAME[case](spec)
    r = CliRunner().invoke(app, ["fmt", src, "-o", out])
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: refusing to overwrite the input"), r.stderr
    assert "comments" in lines[0] and "another file" in lines[0] and "--force" in lines[0]
    assert "Traceback" not in r.output
    assert spec.read_text() == before  # untouched, comments and all


def test_force_overwrites_the_input(spec: Path) -> None:
    r = CliRunner().invoke(app, ["fmt", str(spec), "-o", "./hope.yaml", "--force"])
    assert r.exit_code == 0, r.output
    text = spec.read_text()
    assert not text.startswith("#") and text.startswith("nestdsl: 1\nname: hope-tiny\n")


def test_another_file_is_written(spec: Path) -> None:
    r = CliRunner().invoke(app, ["fmt", str(spec), "-o", "hope.fmt.yaml"])
    assert r.exit_code == 0, r.output
    stdout = CliRunner().invoke(app, ["fmt", str(spec)]).output
    assert (spec.parent / "hope.fmt.yaml").read_text() == stdout
    r = CliRunner().invoke(app, ["fmt", str(spec), "--to", "nest", "-o", "hope.nest"])
    assert r.exit_code == 0 and (spec.parent / "hope.nest").read_text().startswith("nestdsl 1\n")


def test_check_and_fmt_take_set(tmp_path: Path) -> None:
    """`check --set` checks the override as if the file wrote it; `fmt --resolved --set` shows
    its effect (here on a named optimizer, inlined)."""
    runner, preset = CliRunner(), SPECS / "deltanet.yaml"
    bad = runner.invoke(app, ["check", str(preset), "--set", "model.width=-3"])
    assert bad.exit_code == 2 and "'model.width' must be >= 1" in bad.output, bad.output
    good = runner.invoke(app, ["check", str(preset), "--set", "model.width=32"])
    assert good.exit_code == 0, good.output
    shown = runner.invoke(app, ["fmt", str(preset), "--resolved", "--set", "optimizer.lr=0.01"])
    assert shown.exit_code == 0, shown.output
    optimizer = shown.output.split("\noptimizer:\n", 1)[1].split("\n\n", 1)[0]
    assert "  type: adamw\n  lr: 0.01\n" in optimizer, shown.output
    assert "  compile: auto\n" in shown.output  # unset means auto, and fmt --resolved says so
