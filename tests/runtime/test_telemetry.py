"""Inner-loop telemetry: per-memory statistics in metrics.jsonl, a plot of them, and a
non-finite error that names the memory, layer and chunk where the divergence started."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nestdsl.cli import app
from nestdsl.pipeline import load_spec
from nestdsl.runtime.metrics import read_metrics
from nestdsl.runtime.train import TrainingDiverged, train

SPECS = Path(__file__).resolve().parents[2] / "specs"
SMALL = ["data={task: copy, seq_len: 48, batch: 2, length: 8}", "train.compile=false",
         "train.log_every=2", "train.ckpt_every=4"]


def _train(tmp_path: Path, preset: str, *extra: str, steps: int = 4):
    spec = load_spec(SPECS / f"{preset}.yaml", overrides=[*SMALL, *extra])
    return train(spec, spec_text=spec.model_dump_json(), run_dir=tmp_path / "run", steps=steps)


def test_metrics_record_every_memory_at_log_steps(tmp_path: Path) -> None:
    # a well-damped inner loop (momentum 0.5; the preset's 0.9 overshoots a little at init)
    _train(tmp_path, "titans-lmm", "memories.titans.rule.momentum={learned: sigmoid, init: 0.5}")
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == [2, 4]
    for r in records:
        mems = r["memories"]
        assert len(mems) == 2                                     # one memory layer per block
        for stats in mems.values():
            for key in ("state_norm", "max_state_norm", "update_norm", "loss_before",
                        "loss_after", "lr", "retention", "momentum"):
                assert math.isfinite(stats[key]), key
            assert stats["max_state_norm"] >= stats["state_norm"] > 0
            assert stats["update_norm"] > 0
            # a memory that learns in context fits each chunk better after writing it
            assert stats["loss_after"] < stats["loss_before"]
            assert 0 < stats["retention"] < 1 and 0 < stats["momentum"] < 1


def test_hope_records_each_of_its_memories(tmp_path: Path) -> None:
    # the preset's own task (copy-8 at seq 32). At seq 128, where 111 identical PAD tokens follow
    # the copy, the first M_mem (no inner norm since 2026-12-02) overshoots on the PADs instead:
    # inner loss 23.6 before its writes, 39.3 after (docs/hope-dynamics.md)
    _train(tmp_path, "hope", "data={task: copy, seq_len: 32, batch: 2, length: 8}", steps=2)
    mems = read_metrics(tmp_path / "run")[-1]["memories"]
    names = {n.rsplit(" ", 1)[-1] for n in mems}
    assert {"M_mem", "M_k", "M_v", "M_eta", "M_alpha"} <= names
    mem = next(s for n, s in mems.items() if n.endswith("M_mem"))
    assert mem["loss_after"] < mem["loss_before"]


def test_telemetry_off_records_nothing(tmp_path: Path) -> None:
    _train(tmp_path, "titans-lmm", "train.telemetry=false", steps=2)
    assert "memories" not in read_metrics(tmp_path / "run")[-1]


def test_divergence_names_the_first_memory_and_chunk(tmp_path: Path) -> None:
    """Without the clip, with a 100× step and heavy momentum, the first block's memory blows up
    inside the forward pass of the first step."""
    with pytest.raises(TrainingDiverged) as err:
        _train(tmp_path, "titans-lmm", "memories.titans.rule.clip=null",
               "memories.titans.rule.lr={learned: sigmoid, scale: 10.0}",
               "memories.titans.rule.momentum={learned: sigmoid, init: 0.95}",
               "data={task: copy, seq_len: 128, batch: 2, length: 8}", steps=2)
    msg = str(err.value)
    assert "first non-finite memory output was in 'blocks.0" in msg and "titans" in msg
    assert "chunk" in msg and "of 16 tokens" in msg


def test_state_norm_warning(tmp_path: Path) -> None:
    with pytest.warns(RuntimeWarning, match="state norm .* > train.state_norm_warn"):
        _train(tmp_path, "titans-lmm", "train.state_norm_warn=0.5", steps=2)


def test_plot_draws_the_memories(tmp_path: Path) -> None:
    _train(tmp_path, "titans-lmm", steps=2)
    out = tmp_path / "loss.png"
    res = CliRunner().invoke(app, ["plot", str(tmp_path / "run"), "-o", str(out)])
    assert res.exit_code == 0, res.output
    png = tmp_path / "loss-memories.png"
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
