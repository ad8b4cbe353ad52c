"""What the CLI tests share: the runner, a one-line-error assertion and a tiny trainable spec."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from nestdsl.cli import app

runner = CliRunner()

#: A delta-rule memory + MLP at width 32 on copy-4: trains 4 steps in about a second.
TINY = (Path(__file__).resolve().parents[2] / "examples" / "new_spec" / "tiny-delta.yaml").read_text()


def cli(*args: Any) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def one_error(r: Any, code: int = 2) -> str:
    """Exit `code`, no traceback, no "internal error", exactly one `error:` (or `interrupted`)
    line: returned."""
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output and "internal error" not in r.output, r.output
    lines = [line for line in r.output.splitlines() if line.startswith(("error:", "interrupted"))]
    assert len(lines) == 1, r.output
    return lines[0]
