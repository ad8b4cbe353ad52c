"""Metrics JSONL, PNG plots and learning-rate schedules."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from nestdsl.runtime.metrics import MetricsWriter, read_metrics
from nestdsl.runtime.plot import PlotError, plot_heatmap, plot_runs
from nestdsl.runtime.schedule_lr import apply_lr, lr_at, lr_factor, make_schedule
from nestdsl.spec import ir

PNG = b"\x89PNG\r\n\x1a\n"


def write_run(d: Path, losses: list[float]) -> None:
    with MetricsWriter(d, tensorboard=False) as w:
        for i, loss in enumerate(losses):
            w.log((i + 1) * 10, loss=loss, tokens_per_s=1000.0 + i, lr=1e-3)


def test_metrics_round_trip(tmp_path: Path):
    with MetricsWriter(tmp_path, tensorboard=None) as w:
        rec = w.log(1, loss=torch.tensor(2.5), tokens_per_s=100.0, lr=1e-3, elapsed=0.5)
        assert rec == {"step": 1, "loss": 2.5, "tokens_per_s": 100.0, "lr": 1e-3, "elapsed": 0.5}
        w.log(2, loss=float("nan"), lr=1e-3)
        # flushed per line: visible before close
        assert len(read_metrics(tmp_path)) == 2
    recs = read_metrics(tmp_path)
    assert recs[0] == {"step": 1, "loss": 2.5, "tokens_per_s": 100.0, "lr": 1e-3, "elapsed": 0.5}
    assert math.isnan(recs[1]["loss"]) and recs[1]["elapsed"] >= 0
    text = (tmp_path / "metrics.jsonl").read_text()
    assert "NaN" not in text  # strict JSON
    # a torn last line (crash mid-write) is skipped; appending continues
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "lo')
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    assert read_metrics(tmp_path / "metrics.jsonl")[0]["loss"] == 2.5
    assert read_metrics(tmp_path / "nowhere") == []


def test_metrics_truncate_on_resume(tmp_path: Path):
    write_run(tmp_path, [3.0, 2.0, 1.0, 0.5])
    with MetricsWriter(tmp_path, tensorboard=False, truncate_after=20) as w:
        w.log(30, loss=0.9)
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path)] == [(10, 3.0), (20, 2.0), (30, 0.9)]


def test_plot_runs(tmp_path: Path):
    a, b = tmp_path / "hope", tmp_path / "transformer"
    write_run(a, [5.0, 4.0, 3.0])
    write_run(b, [5.0, 4.5, 4.2])
    out = plot_runs([a, b], tmp_path / "out" / "loss.png", smooth=0.5)
    assert out.read_bytes()[:8] == PNG and out.stat().st_size > 1000
    with pytest.raises(PlotError, match="nothing to plot"):
        plot_runs([tmp_path / "empty"], tmp_path / "x.png")
    with pytest.raises(PlotError, match="nothing to plot"):
        plot_runs([a], tmp_path / "x.png", keys=("val_loss",))


def test_plot_heatmap(tmp_path: Path):
    table = {"hope": {256: 1.0, 512: 0.75, 1024: 0.5}, "transformer": {256: 1.0, 2048: 0.0}}
    out = plot_heatmap(table, tmp_path / "niah.png")
    assert out.read_bytes()[:8] == PNG
    out = plot_heatmap({256: 1.0, 512: 0.5}, tmp_path / "one.png")
    assert out.read_bytes()[:8] == PNG
    with pytest.raises(PlotError):
        plot_heatmap({}, tmp_path / "e.png")


def test_schedules():
    kw = {"total_steps": 100, "warmup": 10}
    assert lr_factor(0, schedule="constant", **kw) == pytest.approx(0.1)
    assert lr_factor(9, schedule="cosine", **kw) == 1.0
    assert lr_factor(10, schedule="cosine", **kw) == 1.0
    assert lr_factor(55, schedule="cosine", **kw) == pytest.approx(0.5)
    assert lr_factor(100, schedule="cosine", **kw) == pytest.approx(0.0)
    assert lr_factor(500, schedule="linear", **kw) == 0.0
    assert lr_factor(55, schedule="linear", **kw) == pytest.approx(0.5)
    assert lr_factor(99, schedule="constant", **kw) == 1.0
    assert lr_factor(100, schedule="cosine", min_ratio=0.1, **kw) == pytest.approx(0.1)
    assert lr_at(55, base_lr=2e-3, schedule="linear", **kw) == pytest.approx(1e-3)
    vals = [lr_factor(s, schedule="cosine", **kw) for s in range(10, 101)]
    assert all(x >= y for x, y in zip(vals, vals[1:], strict=False))
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_factor(0, total_steps=10, schedule="step")
    f = make_schedule(ir.Train(steps=20, schedule="linear", warmup=0))
    assert f(0) == 1.0 and f(10) == pytest.approx(0.5)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p], "lr": 0.1}, {"params": [], "lr": 0.01}])
    assert apply_lr(opt, 0.5) == pytest.approx([0.05, 0.005])
    assert apply_lr(opt, 1.0) == pytest.approx([0.1, 0.01])
