"""The Titans spec a new user copies from docs/own-data.md checks clean and trains 20 steps on a
folder of text without diverging (before the stable defaults it went non-finite at step 1)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from tests.runtime.cli_helpers import cli

DOC = Path(__file__).resolve().parents[2] / "docs" / "own-data.md"


def _doc_spec() -> str:
    section = DOC.read_text().split("## End to end, with a spec of your own", 1)[1]
    return re.search(r"```yaml\n(.*?)```", section, re.S).group(1)


def test_the_docs_titans_spec_trains_20_steps_without_diverging(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("my-lm.yaml").write_text(_doc_spec())
    books = Path("books")
    books.mkdir()
    verse = "It is a truth universally acknowledged that a memory must learn to recall. "
    for i in range(3):
        (books / f"book{i}.txt").write_text(f"Chapter {i}. " + verse * 200)

    checked = cli("check", "my-lm.yaml")
    assert checked.exit_code == 0 and "warning" not in checked.output, checked.output

    trained = cli("train", "my-lm.yaml", "--steps", 20, "--out", "runs/my-lm")
    assert trained.exit_code == 0, trained.output
    assert "diverg" not in trained.output and "non-finite" not in trained.output, trained.output
    records = [json.loads(line) for line in Path("runs/my-lm/metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses and all(math.isfinite(x) for x in losses), losses
    assert losses[-1] < losses[0], losses
    norms = [m["state_norm"] for r in records for m in r.get("memories", {}).values()]
    assert norms and all(math.isfinite(n) for n in norms), norms
