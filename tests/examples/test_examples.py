"""The examples run as a researcher would run them (subprocesses, small budgets) and show what
they claim: the memory layer learns and streams exactly, the optimizer spec trains any model,
the new spec checks / draws / lowers / trains, the optimizer experiment runs from its data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nestdsl.cli import app

pytestmark = pytest.mark.slow          # subprocesses that train: the full lane (CI) runs them

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def run(*args: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=ROOT,
                       timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    return json.loads(p.stdout[p.stdout.index("{"):])


def test_memory_layer_in_pytorch_learns_and_streams_exactly() -> None:
    out = run(str(EXAMPLES / "memory_layer_in_pytorch.py"), "--steps", "150")
    assert out["final_loss"] < out["first_loss"] - 0.5
    assert out["stream_max_abs_diff"] < 1e-5


def test_optimizer_spec_on_any_model() -> None:
    out = run(str(EXAMPLES / "optimizer_on_any_model.py"), "--steps", "60")
    assert out["optimizer"] == "MultiOptimizer" and out["routes"]["0.weight"] == "m3"
    assert out["routes"]["0.bias"] == "adamw" and "slow_momentum" in out["levels"]
    assert out["final_loss"] < 0.5 * out["first_loss"]


def test_a_new_spec_checks_draws_lowers_and_trains(tmp_path: Path) -> None:
    spec = str(EXAMPLES / "new_spec" / "delta-swa.nest")
    cli = CliRunner()
    for args in (["check", spec], ["graph", spec], ["compile", spec, "--explain", "--no-compile"]):
        r = cli.invoke(app, args)
        assert r.exit_code == 0, r.output
    assert "Gated DeltaNet" in cli.invoke(app, ["graph", spec]).output
    r = cli.invoke(app, ["train", spec, "--steps", "3", "--out", str(tmp_path / "run"), "-q"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "run" / "metrics.jsonl").exists()
