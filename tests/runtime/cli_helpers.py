"""What the CLI tests share: the runner, a one-line-error assertion and a tiny trainable spec."""

from __future__ import annotations

from typing import Any

from typer.testing import CliRunner

from nestdsl.cli import app

runner = CliRunner()

#: A delta-rule memory + MLP at width 32 on copy-4: trains 4 steps in about a second.
TINY = """\
nestdsl: 1
name: tiny
model: {vocab: 256, width: 32, depth: 1, heads: 2, pattern: [block]}
memories:
  delta: {kind: linear, objective: l2, rule: {kind: gd, lr: {learned: sigmoid}}, level: token}
blocks:
  block:
    layers: [{type: memory, memory: delta}, {type: mlp, hidden: 2}]
optimizer: {type: adamw, lr: 0.003}
data: {task: copy, length: 4, seq_len: 16, batch: 2}
train: {steps: 4, log_every: 2, ckpt_every: 2, compile: false}
"""


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
