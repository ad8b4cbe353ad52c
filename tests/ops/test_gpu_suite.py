"""benchmarks/gpu_suite.py runs end to end on tiny shapes (`--smoke`): the kernels it checks on a
GPU pass its own correctness section here in Triton's interpreter, and every section reports."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT / "benchmarks" / "gpu_suite.py"


@pytest.mark.slow
def test_gpu_suite_smoke_runs_every_section(tmp_path):
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    out = tmp_path / "suite.json"
    p = subprocess.run([sys.executable, str(SUITE), "--smoke", "--device", "cpu", "--out",
                        str(out)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    doc = json.loads(out.read_text())
    triton_rows = [r for r in doc["correctness"] if r["kernel"] == "triton"]
    assert len(triton_rows) == 8 and all(r["ok"] for r in triton_rows), triton_rows
    assert doc["all_correct"]
    assert [r["spec"] for r in doc["models"]] == ["specs/transformer.yaml", "specs/titans-lmm.yaml"]
    assert all("tokens_per_s" in r for r in doc["models"]), doc["models"]
    ops = {(r["op"], r["impl"]): r for r in doc["ops"]}
    assert "tokens_per_s" in ops[("titans-mlp", "triton")]
    assert "tokens_per_s" in ops[("deltanet", "chunked")]
    assert "skipped" in ops[("deltanet", "fla")]     # fla needs CUDA
