"""Honest, quiet, fast defaults (issue #20 items 4 and 6): eager on CPU unless asked, tok/s
without the compile, plain progress lines off a terminal, a counter on long evals, outputs into
run folders, checkpoint modes that follow the umask, and divergence messages that tell the truth.
Mostly the stand-in system (test_train_standin.py); the divergence test trains a real spec."""

from __future__ import annotations

import io
import os
import re
import stat
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_train_standin as S  # noqa: E402

import nestdsl  # noqa: E402
import nestdsl.runtime.checkpoint as ck  # noqa: E402
from nestdsl.cli import app  # noqa: E402
from nestdsl.pipeline import load_spec  # noqa: E402
from nestdsl.runtime.metrics import read_metrics  # noqa: E402
from nestdsl.runtime.progress import Progress, counter  # noqa: E402
from nestdsl.runtime.train import resolve_compile  # noqa: E402
from nestdsl.runtime.train import train as run_train  # noqa: E402
from nestdsl.spec import ir  # noqa: E402

runner = CliRunner()
LOG_LINE = re.compile(r"^step (\d+)/(\d+)  loss \d+\.\d{4}  lr \d\.\d\de[+-]\d\d  [\d,]+ tok/s  \d+:\d\d:\d\d$")


def cli(*args: Any) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def spec_with(tmp: Path, compile_line: str | None, name: str = "standin.yaml", **kw: Any) -> Path:
    """The stand-in text spec; `compile_line` replaces its `compile: false` (None: no key)."""
    path = S.text_spec(tmp, **kw)
    text = path.read_text()
    text = text.replace(", compile: false", "" if compile_line is None else f", {compile_line}")
    out = tmp / name
    out.write_text(text)
    return out


def recording_compile(monkeypatch: Any, seen: list[bool], *, slow_first_s: float = 0.0) -> None:
    """`nestdsl.compile` builds the stand-in and records its `compile` argument; with
    `slow_first_s`, the model's first loss call sleeps that long (a stand-in for torch.compile)."""
    build = S.factory()

    def compile_and_record(spec: Any, device: str = "cpu", compile: bool = True, **kw: Any) -> Any:  # noqa: A002
        seen.append(compile)
        system = build(spec, device=device, compile=compile, **kw)
        if slow_first_s:
            model, real = system.model, system.model.loss

            def loss(*a: Any, **k: Any) -> Any:
                if model.calls == 0:
                    time.sleep(slow_first_s)
                return real(*a, **k)

            model.loss = loss
        return system

    monkeypatch.setattr(nestdsl, "compile", compile_and_record)


# ---------------------------------------------------------------------------------------------
# A1: eager by default on CPU


def test_cpu_trains_eager_unless_the_spec_or_the_command_asks(tmp_path, monkeypatch):
    seen: list[bool] = []
    recording_compile(monkeypatch, seen)
    auto = spec_with(tmp_path, None, steps=2, log_every=1, ckpt_every=2)
    assert cli("train", auto, "--out", tmp_path / "a", "-q").exit_code == 0
    assert cli("train", auto, "--out", tmp_path / "b", "-q", "--compile").exit_code == 0
    assert cli("train", auto, "--out", tmp_path / "c", "-q", "--set", "train.compile=true").exit_code == 0
    written = spec_with(tmp_path, "compile: true", name="written.yaml", steps=2, log_every=1, ckpt_every=2)
    assert cli("train", written, "--out", tmp_path / "d", "-q").exit_code == 0
    assert cli("train", written, "--out", tmp_path / "e", "-q", "--no-compile").exit_code == 0
    assert seen == [False, True, True, True, False]


def test_resolve_compile():
    default, written_true, written_false = ir.Train(), ir.Train(compile=True), ir.Train(compile=False)
    assert default.compile == "auto"                          # shown as such by fmt --resolved
    assert resolve_compile(default, "cpu") is False
    assert resolve_compile(None, "cpu") is False
    assert resolve_compile(default, "cuda") is True
    assert resolve_compile(default, "cuda:1") is True
    assert resolve_compile(written_true, "cpu") is True
    assert resolve_compile(written_false, "cuda") is False
    assert resolve_compile(written_false, "cuda", True) is True   # compile= overrides the spec
    assert resolve_compile(written_true, "cpu", False) is False
    assert resolve_compile(ir.Train(compile="auto"), "cuda") is True
    assert resolve_compile(default.model_copy(update={"steps": 5}), "cpu") is False


def test_written_compile_survives_the_nest_syntax_and_set():
    repo = S.REPO / "specs"
    assert load_spec(repo / "hope.nest").train.compile is False
    lmm = load_spec(repo / "titans-lmm.yaml")
    assert lmm.train.compile == "auto"
    assert resolve_compile(lmm.train, "cpu") is False
    forced = load_spec(repo / "titans-lmm.yaml", overrides=["train.compile=true"])
    assert resolve_compile(forced.train, "cpu") is True


# ---------------------------------------------------------------------------------------------
# A2: a "compiling" status, and tok/s without the first step


def test_tokens_per_s_leaves_out_the_first_step(tmp_path, monkeypatch):
    seen: list[bool] = []
    recording_compile(monkeypatch, seen, slow_first_s=1.0)
    spec = load_spec(spec_with(tmp_path, None, steps=6, log_every=3, ckpt_every=6))
    statuses: list[str] = []
    events: list[str] = []

    def on_status(text: str) -> None:
        statuses.append(text)
        events.append(f"status:{text}")

    result = run_train(spec, spec_text="x", run_dir=tmp_path / "run", compile=True,
                       on_status=on_status, on_log=lambda r: events.append(f"log:{r['step']}"))
    assert seen == [True] and statuses == ["compiling", ""]
    assert events[:2] == ["status:compiling", "status:"]      # before any log step
    assert result.compiled and result.first_step_s >= 1.0
    tokens = 8 * 32 * 6
    # with the slow first step counted, tok/s could not exceed tokens / 1 s
    assert result.tokens_per_s > 3 * tokens, result
    recs = read_metrics(tmp_path / "run")
    assert all(r["first_step_s"] >= 1.0 for r in recs)
    assert all(r["tokens_per_s"] > 3 * tokens for r in recs), recs
    assert recs[-1]["elapsed"] >= 1.0                         # elapsed is still the wall time


def test_compiled_run_says_compiling_and_the_summary_names_the_first_step(tmp_path, monkeypatch):
    recording_compile(monkeypatch, [])
    spec = spec_with(tmp_path, None, steps=4, log_every=2, ckpt_every=4)
    r = cli("train", spec, "--out", tmp_path / "run", "--compile")
    assert r.exit_code == 0, r.output
    assert r.output.count("compiling (torch.compile)") == 1
    assert "first step" in r.output and "with compile" in r.output
    eager = cli("train", spec, "--out", tmp_path / "eager")
    assert eager.exit_code == 0 and "compiling" not in eager.output and "first step" not in eager.output


# ---------------------------------------------------------------------------------------------
# A4: plain lines off a terminal, the bar on one


def test_non_tty_progress_is_one_plain_line_per_log_step(tmp_path, monkeypatch):
    S.install(monkeypatch)
    spec = S.text_spec(tmp_path, steps=6, log_every=2, ckpt_every=6)
    r = cli("train", spec, "--out", tmp_path / "run")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    steps = [LOG_LINE.match(line) for line in lines if line.startswith("step")]
    assert [(m.group(1), m.group(2)) for m in steps if m] == [("2", "6"), ("4", "6"), ("6", "6")], r.output
    assert len(steps) == 3 and all(steps)
    assert not any(c in r.output for c in ("━", "…", "ETA")), r.output
    assert lines[-1].startswith("done 6 steps")
    assert len(lines) == 4, r.output


def test_tty_progress_draws_the_bar_and_keeps_the_lines():
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=160, color_system=None)
    with Progress(4, title="t", console=console) as p:
        p.status("compiling")
        p.update({"step": 2, "loss": 1.5, "lr": 1e-3, "tokens_per_s": 1234.0, "elapsed": 3.0})
        p.status("")
    out = buf.getvalue()
    assert "━" in out and "compiling…" in out
    assert "step 2/4  loss 1.5000  lr 1.00e-03  1,234 tok/s  0:00:03" in out


def test_disabled_progress_prints_nothing():
    buf = io.StringIO()
    with Progress(4, enabled=False, console=Console(file=buf, force_terminal=True)) as p:
        p.status("compiling")
        p.update({"step": 2, "loss": 1.5, "lr": 1e-3, "tokens_per_s": 1.0, "elapsed": 1.0})
    assert buf.getvalue() == ""


# ---------------------------------------------------------------------------------------------
# A3: a counter on long evals (terminal only)


@pytest.fixture
def trained(tmp_path, monkeypatch) -> tuple[Path, Path]:
    S.install(monkeypatch)
    spec = S.text_spec(tmp_path, steps=2, log_every=1, ckpt_every=2)
    r = cli("train", spec, "--out", tmp_path / "run", "-q")
    assert r.exit_code == 0, r.output
    return spec, tmp_path / "run"


def test_niah_eval_counts_cells_on_a_terminal(trained, monkeypatch):
    import nestdsl.cli.evaluate as cli_eval

    spec, run = trained
    args = ("eval", spec, "--ckpt", run, "--task", "niah", "--lengths", "64,128", "--batches", "1")
    quiet = cli(*args)                      # CliRunner's output is not a terminal: no counter
    assert quiet.exit_code == 0, quiet.output
    assert "S-NIAH cells" not in quiet.output and "4/4" not in quiet.output
    buf = io.StringIO()
    monkeypatch.setattr(cli_eval, "out", Console(file=buf, force_terminal=True, width=160,
                                                  color_system=None))
    r = cli(*args)
    assert r.exit_code == 0, r.output
    # 3 variants x 2 lengths, S-NIAH-2 and -3 too long for 64 tokens: 4 cells
    assert "S-NIAH cells" in buf.getvalue() and "4/4" in buf.getvalue()
    assert "S-NIAH accuracy" in buf.getvalue()


def test_counter_is_silent_off_a_terminal():
    buf = io.StringIO()
    with counter(Console(file=buf), 3, "cells") as c:
        for i in range(3):
            c.working_on(f"cell {i}")
            c.advance()
    assert buf.getvalue() == ""


# ---------------------------------------------------------------------------------------------
# A5, A6: outputs into run folders


def test_graph_picture_goes_to_the_run_folder_and_text_to_stdout(tmp_path, monkeypatch):
    specs = tmp_path / "specs"
    specs.mkdir()
    spec = specs / "dn.yaml"
    spec.write_text(re.sub(r"(?m)^optimizer:.*$", "optimizer: {type: adamw, lr: 0.003}",
                           (S.REPO / "specs" / "deltanet.yaml").read_text()))
    monkeypatch.chdir(tmp_path)
    r = cli("graph", spec, "-f", "png")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "runs" / "dn" / "graph.png").read_bytes()[:4] == b"\x89PNG"
    assert "runs/dn/graph.png" in r.output
    r = cli("graph", spec, "-f", "svg")
    assert r.exit_code == 0 and (tmp_path / "runs" / "dn" / "graph.svg").is_file(), r.output
    for fmt in ("text", "mermaid", "dot", "json"):
        r = cli("graph", spec, "-f", fmt)
        assert r.exit_code == 0 and r.output.strip(), r.output
    assert sorted(p.name for p in specs.iterdir()) == ["dn.yaml"]         # nothing beside the spec
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs", "specs"]
    assert sorted(p.name for p in (tmp_path / "runs" / "dn").iterdir()) == ["graph.png", "graph.svg"]
    assert "runs/<spec file stem>/graph" in _help("graph")


def test_plot_goes_into_the_run_folder(tmp_path, monkeypatch):
    S.install(monkeypatch)
    spec = S.text_spec(tmp_path, steps=2, log_every=1, ckpt_every=2)
    for run in ("a", "b"):
        assert cli("train", spec, "--out", tmp_path / run, "-q").exit_code == 0
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    r = cli("plot", tmp_path / "a")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "a" / "loss.png").is_file() and (tmp_path / "a" / "loss-memories.png").exists() is False
    r = cli("plot", tmp_path / "a", tmp_path / "b")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "a" / "loss-compare.png").is_file()
    assert list(cwd.iterdir()) == []
    assert "RUN/loss.png" in _help("plot")


def test_train_default_run_folder_is_runs_spec_file_stem(tmp_path, monkeypatch):
    S.install(monkeypatch)
    spec = spec_with(tmp_path, "compile: false", name="my-run.yaml", steps=2, log_every=1, ckpt_every=2)
    assert "name: standin" in spec.read_text()                # the spec's name differs from its stem
    monkeypatch.chdir(tmp_path)
    assert cli("train", spec, "-q").exit_code == 0
    assert ck.find_latest(tmp_path / "runs" / "my-run") is not None
    assert not (tmp_path / "runs" / "standin").exists()
    assert "runs/<spec file stem>" in _help("train")


def _help(command: str) -> str:
    r = runner.invoke(app, [command, "--help"], terminal_width=200, env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", r.output).split())


# ---------------------------------------------------------------------------------------------
# A7: checkpoint modes follow the umask


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_checkpoint_modes_follow_the_umask(tmp_path, monkeypatch, umask):
    S.install(monkeypatch)
    spec = S.text_spec(tmp_path, steps=2, log_every=1, ckpt_every=1)
    old = os.umask(umask)
    try:
        r = cli("train", spec, "--out", tmp_path / "run", "-q")
    finally:
        os.umask(old)
    assert r.exit_code == 0, r.output
    run = tmp_path / "run"

    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)

    assert mode(run) == 0o777 & ~umask
    assert mode(run / "metrics.jsonl") == 0o666 & ~umask
    steps = sorted(p for p in run.iterdir() if p.is_dir())
    assert [p.name for p in steps] == ["step_000001", "step_000002"]
    for folder in steps:
        assert mode(folder) == mode(run), folder
        files = list(folder.iterdir())
        assert {f.name for f in files} >= {"meta.json", "model.safetensors"}
        for f in files:
            assert mode(f) == mode(run / "metrics.jsonl"), f


# ---------------------------------------------------------------------------------------------
# B: divergence messages that tell the truth


USER_TITANS = textwrap.dedent("""\
    nestdsl: 1
    name: my-titans
    model: {vocab: 256, width: 64, depth: 2, heads: 4, pattern: [block]}
    levels:
      chunk: {every: 16 tokens}
    memories:
      titans:
        kind: mlp
        objective: l2
        rule: {kind: gd, lr: {learned: sigmoid}, momentum: {learned: sigmoid}, retention: {learned: sigmoid}}
        level: chunk
    blocks:
      block:
        layers: [{type: memory, memory: titans}, {type: mlp, hidden: 4}]
    optimizer: {type: adamw, lr: 0.003, weight_decay: 0.01, beta: 0.9, beta2: 0.99}
    data: {task: mqar, seq_len: 128, batch: 8}
    train: {steps: 20, log_every: 1}
    """)


def _error_line(r: Any) -> str:
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and "internal error" not in r.output, r.output
    lines = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, r.output
    return lines[0]


def test_a_titans_spec_with_the_library_defaults_diverges_at_step_1_and_says_what_to_change(tmp_path):
    spec = tmp_path / "my-titans.yaml"
    spec.write_text(USER_TITANS)
    r = cli("train", spec, "--out", tmp_path / "run", "--steps", "2", "-q")
    line = _error_line(r)
    assert "non-finite at step 1" in line and "'blocks.0.0 titans'" in line
    assert "No checkpoint was written yet" in line and "last good checkpoint" not in line
    assert "memories.titans.rule.lr.scale (now 1; the presets use 0.1)" in line
    assert "memories.titans.rule.clip (unset; the presets use 1.0)" in line
    assert "optimizer.lr (now 0.003)" in line
    assert "grad_clip" not in line                       # it is on (the default 1.0)
    assert ck.find_latest(tmp_path / "run") is None


def test_the_presets_settings_make_it_train(tmp_path):
    spec = tmp_path / "my-titans.yaml"
    spec.write_text(USER_TITANS.replace(
        "rule: {kind: gd, lr: {learned: sigmoid},",
        "rule: {kind: gd, clip: 1.0, lr: {learned: sigmoid, scale: 0.1},"))
    r = cli("train", spec, "--out", tmp_path / "run", "--steps", "3", "-q")
    assert r.exit_code == 0, r.output


def test_divergence_names_grad_clip_only_when_off_and_the_checkpoint_kept(tmp_path, monkeypatch):
    S.install(monkeypatch, nan_at=3)
    spec = S.text_spec(tmp_path, steps=10, log_every=1, ckpt_every=2, grad_clip=None)
    line = _error_line(cli("train", spec, "--out", tmp_path / "run", "-q"))
    assert "non-finite at step 3" in line
    assert f"The last good checkpoint (step 2) is kept in {tmp_path / 'run' / 'step_000002'}" in line
    assert "set train.grad_clip (off; the default is 1.0)" in line
    assert "optimizer.lr (now 0.01)" in line


def test_parameter_overflow_message_is_truthful(tmp_path, monkeypatch):
    S.install(monkeypatch)
    spec = S.text_spec(tmp_path, steps=20, log_every=5, ckpt_every=1, grad_clip=None)
    r = cli("train", spec, "--out", tmp_path / "run", "-q", "--set", "optimizer.lr=1.0e+30")
    line = _error_line(r)
    assert "non-finite" in line and "To stabilise it" in line and "optimizer.lr (now 1e+30)" in line
    latest = ck.find_latest(tmp_path / "run")
    if latest is None:
        assert "No checkpoint was written yet" in line
    else:
        assert f"(step {ck.read_meta(latest)['step']}) is kept in {latest}" in line
