"""`nestdsl data prepare` and `nestdsl data info`: a summary line, the sidecar summary, and bad
input as one `error:` line with exit 2 (never a traceback)."""

from __future__ import annotations

import json
from typing import Any

from shard_helpers import DOCS, write_txt_folder
from typer.testing import CliRunner

from nestdsl.cli import app

runner = CliRunner()


def cli(*args: Any) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def one_error(r: Any) -> str:
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and "internal error" not in r.output, r.output
    lines = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, r.output
    return lines[0]


def test_prepare_then_info(tmp_path):
    src = write_txt_folder(tmp_path / "corpus", DOCS * 3)
    r = cli("data", "prepare", src, "--out", tmp_path / "shards", "--shard-tokens", 500,
            "--val-fraction", 0.1)
    assert r.exit_code == 0, r.output
    sc = json.loads((tmp_path / "shards" / "shards.json").read_text())
    n = sc["totals"]["tokens"]
    assert f"prepared {n:,} tokens from 36 documents in {sc['totals']['shards']} shards (uint16" in r.output
    assert sc["totals"]["shards"] > 2 and sc["splits"]["val"]["documents"] == 3
    r = cli("data", "info", tmp_path / "shards")
    assert r.exit_code == 0, r.output
    assert "uint16, vocab 256, tokenizer bytes" in r.output and "newline [10]" in r.output
    assert f"train: {sc['splits']['train']['tokens']:,} tokens, 33 documents" in r.output
    assert "ok: sizes of" in r.output
    r = cli("data", "info", tmp_path / "shards", "--verify")
    assert r.exit_code == 0 and "ok: sizes and sha256 of" in r.output, r.output


def test_prepare_errors_are_one_line(tmp_path):
    src = write_txt_folder(tmp_path / "corpus", DOCS)
    assert "data path not found" in one_error(cli("data", "prepare", tmp_path / "nope", "--out", tmp_path / "o"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("mine")
    line = one_error(cli("data", "prepare", src, "--out", tmp_path / "full"))
    assert "not empty; pass --force" in line
    r = cli("data", "prepare", src, "--out", tmp_path / "full", "--force", "-q")
    assert r.exit_code == 0 and not (tmp_path / "full" / "x").exists(), r.output
    assert "--val-fraction must be in [0, 1)" in one_error(
        cli("data", "prepare", src, "--out", tmp_path / "o", "--val-fraction", 1.5))
    assert "--shard-tokens must be >= 1" in one_error(
        cli("data", "prepare", src, "--out", tmp_path / "o", "--shard-tokens", 0))
    assert "a tokenizer.json" in one_error(
        cli("data", "prepare", src, "--out", tmp_path / "o", "--tokenizer", "gpt2"))


def test_info_on_a_damaged_folder(tmp_path):
    assert "nestdsl data prepare" in one_error(cli("data", "info", tmp_path))
    src = write_txt_folder(tmp_path / "corpus", DOCS)
    assert cli("data", "prepare", src, "--out", tmp_path / "s", "-q").exit_code == 0
    shard = tmp_path / "s" / "train_00000.bin"
    data = bytearray(shard.read_bytes())
    data[0] ^= 1
    shard.write_bytes(bytes(data))
    assert cli("data", "info", tmp_path / "s").exit_code == 0     # sizes still agree
    assert "does not match its sha256" in one_error(cli("data", "info", tmp_path / "s", "--verify"))
    shard.write_bytes(bytes(data[:-2]))
    assert "truncated" in one_error(cli("data", "info", tmp_path / "s"))
