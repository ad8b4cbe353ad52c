"""benchmarks/hostile_inputs.py scores real `nestdsl` processes: a cheap case passes and the
scoring catches a silent one."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "hostile_inputs.py"


def test_the_script_runs_and_scores():
    done = subprocess.run([sys.executable, str(SCRIPT), "-k", "bad YAML"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["totals"] == {"cases": 1, "failed": 0, "internal_errors": 0, "tracebacks": 0,
                                "silent": 0}
    assert report["records"][0]["says"].startswith("y.yaml:")


def test_a_case_without_its_sentence_is_silent(tmp_path):
    spec = importlib.util.spec_from_file_location("hostile_inputs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["hostile_inputs"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    case = module.Case("schema says nothing of errors", ["schema"], exit=(0,), says="error:")
    record = module.run_case(case, tmp_path)
    assert not record["ok"] and record["silent"] and "wrong_exit" not in record
