"""docs/results.md is generated from benchmarks/results/ and cannot drift from it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _report():
    spec = importlib.util.spec_from_file_location("report", ROOT / "benchmarks" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_results_page_matches_the_result_files():
    report = _report()
    assert report.main(["--check"]) == 0, "run: python benchmarks/report.py"


def test_every_result_file_appears_on_the_page():
    page = (ROOT / "docs" / "results.md").read_text()
    results = ROOT / "benchmarks" / "results"
    for path in results.rglob("*.json*"):
        relative = path.relative_to(ROOT).as_posix()
        assert relative in page or f"{path.parent.relative_to(ROOT).as_posix()}/" in page, relative
        reproduce = results / "reproduce" in path.parents    # tabulated in docs/reproduction.md
        if path.parent != results and path.suffix == ".json" and not reproduce:
            assert relative in page or path.name in page, relative


def test_a_learn_record_becomes_a_table_row():
    report = _report()
    record = {
        "preset": "hope",
        "task": "copy8",
        "seed": 2,
        "steps": 700,
        "overrides": ["data.seq_len=32", "memory.renorm=true"],
        "answer_acc": 0.99375,
        "tokens_per_s": 1234.5,
        "nested": {"a": 1},
    }
    header, rule, row = report.table([record])
    assert header == (
        "| preset | task | seed | steps | overrides | answer_acc | tokens_per_s | nested.a |"
    )
    assert rule.count("---") == 8
    assert row == "| hope | copy8 | 2 | 700 | data.seq_len=32; memory.renorm=true | 0.9938 | 1,234 | 1 |"


def test_the_page_states_a_shipped_figure():
    """A figure quoted in the lab notes is found on the generated page, from its JSON."""
    data = json.loads(
        (ROOT / "benchmarks/results/learn-others-1000-cpu-2026-11-28.json").read_text()
    )
    deltanet = next(r for r in data["records"] if r["preset"] == "deltanet" and r["task"] == "mqar8")
    page = (ROOT / "docs" / "results.md").read_text()
    assert f"| {deltanet['answer_acc']:.4g} |" in page
