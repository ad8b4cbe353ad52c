"""`nestdsl eval` (NIAH table + heatmap, text loss/perplexity/bpb, recall accuracy) and
`nestdsl plot` on real run folders (stand-in system; the `slow` test uses a real preset)."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_train_standin as S  # noqa: E402

from nestdsl.cli import app  # noqa: E402

runner = CliRunner()
PNG = b"\x89PNG\r\n\x1a\n"


def cli(*args: Any) -> Any:
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def trained(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """(spec, run folder) of a short stand-in run on synthetic text."""
    S.install(monkeypatch)
    spec = S.text_spec(tmp_path, steps=6, log_every=2, ckpt_every=3)
    r = cli("train", spec, "--out", tmp_path / "run", "--no-compile", "-q")
    assert r.exit_code == 0, r.output
    return spec, tmp_path / "run"


def test_eval_niah_table_and_heatmap(trained, tmp_path):
    spec, run = trained
    png = tmp_path / "niah.png"
    r = cli("eval", spec, "--ckpt", run, "--task", "niah", "--lengths", "64,128", "--batches", "1", "--png", png)
    assert r.exit_code == 0, r.output
    out = r.output
    assert "S-NIAH accuracy" in out and "64" in out and "128" in out
    for v in (1, 2, 3):
        assert f"S-NIAH-{v}" in out
    # S-NIAH-1 fits in 64 tokens; S-NIAH-3 needs 128: its 64 cell is blank, with a note
    row1 = next(line for line in out.splitlines() if "S-NIAH-1" in line)
    assert len(re.findall(r"\d+\.\d%", row1)) == 2
    row3 = next(line for line in out.splitlines() if "S-NIAH-3" in line and "needs" not in line)
    assert "—" in row3 and len(re.findall(r"\d+\.\d%", row3)) == 1
    assert "S-NIAH-3 needs length >= 128" in out
    assert png.read_bytes()[:8] == PNG


def test_eval_niah_default_png_goes_to_the_checkpoint_folder(trained):
    spec, run = trained
    r = cli("eval", spec, "--ckpt", run, "--task", "niah", "--lengths", "64", "--variants", "1", "--batches", "1")
    assert r.exit_code == 0, r.output
    assert (run / "niah.png").read_bytes()[:8] == PNG


def test_eval_text_loss_perplexity_bpb(trained, tmp_path):
    spec, run = trained
    from nestdsl.pipeline import load_spec
    from nestdsl.runtime.evaluate import evaluate

    r = cli("eval", spec, "--ckpt", run, "--task", "text", "--path", tmp_path / "corpus.txt", "--batches", "2")
    assert r.exit_code == 0, r.output
    for word in ("loss", "perplexity", "bits_per_byte"):
        assert word in r.output
    res = evaluate(load_spec(spec), ckpt=run, task="text",
                   text_path=tmp_path / "corpus.txt", batches=2)
    assert math.isclose(res["perplexity"], math.exp(res["loss"]), rel_tol=1e-9)
    assert math.isclose(res["bits_per_byte"], res["loss"] / math.log(2), rel_tol=1e-9)  # bytes: 1 byte/token
    assert 0 < res["loss"] < math.log(256)  # trained a little: better than uniform
    # the spec's own data is text: the default task evaluates it
    r = cli("eval", spec, "--ckpt", run, "--batches", "1")
    assert r.exit_code == 0 and "bits_per_byte" in r.output, r.output


def test_eval_recall_accuracy_on_a_step_folder(trained):
    spec, run = trained
    r = cli("eval", spec, "--ckpt", run / "step_000003", "--task", "mqar", "--batches", "1")
    assert r.exit_code == 0, r.output
    assert "accuracy" in r.output and "%" in r.output


def test_eval_bad_inputs(trained, tmp_path):
    spec, run = trained

    def user_error(*args: Any) -> str:
        r = cli("eval", spec, *args)
        assert r.exit_code == 2, r.output
        assert "Traceback" not in r.output and "internal error" not in r.output, r.output
        return r.output

    assert "checkpoint not found" in user_error("--ckpt", tmp_path / "nope")
    assert "data path not found" in user_error("--ckpt", run, "--task", "text", "--path", tmp_path / "nope.txt")
    assert "unknown --task" in user_error("--ckpt", run, "--task", "bogus")
    assert "--lengths" in user_error("--ckpt", run, "--task", "niah", "--lengths", "64,abc")
    assert "too short" in user_error("--ckpt", run, "--task", "niah", "--lengths", "32")
    # a checkpoint trained from other overrides (or another spec) is refused, naming the field
    assert "model.width" in user_error("--ckpt", run, "--set", "model.width=8")


def test_eval_with_the_training_overrides(tmp_path, monkeypatch):
    S.install(monkeypatch)
    spec = S.text_spec(tmp_path, steps=2, log_every=1, ckpt_every=2)
    sets = ["--set", "model.width=16"]
    assert cli("train", spec, "--out", tmp_path / "run", "-q", *sets).exit_code == 0
    r = cli("eval", spec, "--ckpt", tmp_path / "run", "--batches", "1", *sets)
    assert r.exit_code == 0, r.output


def test_plot_compares_runs(tmp_path, monkeypatch):
    S.install(monkeypatch)
    spec = S.text_spec(tmp_path, steps=4, log_every=1, ckpt_every=4)
    for name, lr in (("a", "0.01"), ("b", "0.02")):
        r = cli("train", spec, "--out", tmp_path / name, "-q", "--set", f"optimizer.lr={lr}")
        assert r.exit_code == 0, r.output
    r = cli("plot", tmp_path / "a", tmp_path / "b", "-o", tmp_path / "x.png")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "x.png").read_bytes()[:8] == PNG
    r = cli("plot", tmp_path / "a", tmp_path / "nope", "-o", tmp_path / "y.png")
    assert r.exit_code == 2 and "no metrics.jsonl" in r.output and "Traceback" not in r.output


@pytest.mark.slow
def test_eval_niah_on_a_real_preset(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_train import preset_spec

    spec = preset_spec(tmp_path, "transformer", steps=2, log_every=1, ckpt_every=2,
                       data={"task": "niah", "seq_len": 64, "batch": 2, "variant": 1})
    r = cli("train", spec, "--out", tmp_path / "run", "--no-compile", "-q")
    assert r.exit_code == 0, r.output
    r = cli("eval", spec, "--ckpt", tmp_path / "run", "--task", "niah", "--lengths", "64,128",
            "--variants", "1", "--batches", "1", "--png", tmp_path / "h.png")
    assert r.exit_code == 0, r.output
    assert "S-NIAH-1" in r.output and (tmp_path / "h.png").read_bytes()[:8] == PNG


def test_eval_niah_default_lengths_start_at_the_training_length(trained):
    """Without --lengths the table shows the training length (here 32: too short for every
    variant, so a blank column with a note) and 2x, 4x, 8x it."""
    spec, run = trained
    r = cli("eval", spec, "--ckpt", run, "--task", "niah", "--variants", "1", "--batches", "1")
    assert r.exit_code == 0, r.output
    header = next(line for line in r.output.splitlines() if "variant" in line)
    assert re.findall(r"\d+", header) == ["32", "64", "128", "256"], header


def test_recall_eval_reports_token_accuracy_exact_match_and_chance():
    """The recall table's numbers, recomputed here from the model's predictions."""
    import torch

    import nestdsl
    from nestdsl.pipeline import load_spec
    from nestdsl.runtime.evaluate import _mean_loss_and_acc
    from nestdsl.runtime.tasks.copy import CopyTask

    torch.manual_seed(0)
    model = nestdsl.compile(load_spec("specs/transformer.yaml"), compile=False).model.eval()
    task = CopyTask(seq_len=32, batch=4, seed=0, length=8)
    assert task.answer_chance == 1 / 254
    with torch.no_grad():
        _, exact, per_token = _mean_loss_and_acc(model, task, 2, "cpu", "val")
        right = total = 0
        for i in range(2):
            b = task.batch(i, split="val")
            ok = (model(b.tokens).argmax(-1) == b.targets) & b.loss_mask
            right, total = right + int(ok.sum()), total + int(b.loss_mask.sum())
    assert per_token == right / total and 0 <= exact <= per_token
