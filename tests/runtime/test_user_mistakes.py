"""User mistakes and accidents the CLI meets: each is one line (exit 2, or 130 for Ctrl-C), never
an "internal error"; what the command did instead is said, and no good checkpoint is lost."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import TINY as TINY_SPEC
from cli_helpers import cli, one_error

from nestdsl.runtime import checkpoint as ck
from nestdsl.runtime.metrics import read_metrics

TINY = TINY_SPEC.replace("log_every: 2", "log_every: 1").replace(
    "compile: false}", "compile: false, schedule: constant}")


@pytest.fixture
def spec(tmp_path) -> Path:
    p = tmp_path / "tiny.yaml"
    p.write_text(TINY)
    return p


@pytest.fixture
def run(spec, tmp_path) -> Path:
    r = cli("train", spec, "--out", tmp_path / "run", "-q")
    assert r.exit_code == 0, r.output
    return tmp_path / "run"


def test_disk_full_inside_safetensors_keeps_the_last_checkpoint(spec, tmp_path, monkeypatch):
    from safetensors import SafetensorError

    real = ck.save_file
    calls = {"n": 0}

    def full_disk(tensors: Any, path: str) -> None:
        calls["n"] += 1
        if calls["n"] > 3:          # the second checkpoint (three files each) hits a full disk
            raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: '
                                  'StorageFull, message: "No space left on device" })')
        real(tensors, path)

    monkeypatch.setattr(ck, "save_file", full_disk)
    line = one_error(cli("train", spec, "--out", tmp_path / "run", "-q"))
    assert "disk full" in line and "step_000002" in line and "intact" in line
    assert ck.find_latest(tmp_path / "run").name == "step_000002"


def test_ckpt_at_a_file_and_damaged_checkpoints(run, tmp_path):
    assert "is a file" in one_error(cli("eval", "--ckpt", run / "latest"))
    assert "is a file" in one_error(cli("generate", "--ckpt", run / "latest", "--prompt", "a"))
    # a damaged newest checkpoint: eval uses the older one and says so
    (run / "step_000004" / "model.safetensors").write_bytes(b"garbage")
    r = cli("eval", "--ckpt", run, "--batches", "1")
    assert r.exit_code == 0, r.output
    assert "evaluating step_000002 (step 2)" in r.output and "step_000004 incomplete or damaged" in r.output
    # pointed at the damaged folder itself: one line
    assert "step_000004" in one_error(cli("eval", "--ckpt", run / "step_000004", "--batches", "1"))
    (run / "step_000004" / "meta.json").write_text("{not json")
    assert "meta.json" in one_error(cli("eval", "--ckpt", run / "step_000004"))


def test_plot_of_a_run_without_metrics(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.jsonl").write_text("")
    assert "nothing to plot" in one_error(cli("plot", tmp_path / "empty"))


def test_damaged_metrics_are_rebuilt_from_the_checkpoint(spec, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli("train", spec, "--out", a, "-q").exit_code == 0
    assert cli("train", spec, "--out", b, "-q", "--steps", "2").exit_code == 0
    lines = (b / "metrics.jsonl").read_text().splitlines()
    (b / "metrics.jsonl").write_text("{torn\n" + lines[1] + "\n")       # step 1's line is lost
    r = cli("train", spec, "--out", b, "--resume", "-q")
    assert r.exit_code == 0, r.output
    steps = lambda run: [(m["step"], m["loss"]) for m in read_metrics(run)]  # noqa: E731
    assert steps(b) == steps(a) and [s for s, _ in steps(b)] == [1, 2, 3, 4]


def test_warnings_are_one_line(spec, run):
    (run / "step_000004" / "meta.json").unlink()
    r = cli("train", spec, "--out", run, "--resume", "--steps", "6")
    assert r.exit_code == 0, r.output
    warns = [line for line in r.output.splitlines() if "does not verify" in line]
    assert len(warns) == 1 and warns[0].startswith("warning: checkpoint step_000004"), r.output
    assert ".py:" not in r.output


def test_ctrl_c_names_the_checkpoint_to_resume_from(spec, tmp_path, monkeypatch):
    import nestdsl.runtime.train as train_module

    real = train_module.lr_factor

    def interrupt(cfg: Any, step: int) -> float:
        if step == 3:
            raise KeyboardInterrupt
        return real(cfg, step)

    monkeypatch.setattr(train_module, "lr_factor", interrupt)
    line = one_error(cli("train", spec, "--out", tmp_path / "run", "-q"), code=130)
    assert "step_000002 is kept" in line and "--resume" in line
    monkeypatch.setattr(train_module, "lr_factor", real)
    r = cli("train", spec, "--out", tmp_path / "run", "--resume")
    assert r.exit_code == 0 and "resuming from step 2" in r.output, r.output
    meta = json.loads((tmp_path / "run" / "step_000004" / "meta.json").read_text())
    assert meta["step"] == 4
