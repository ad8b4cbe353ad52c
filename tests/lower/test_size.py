"""The size estimate made before allocating: exact parameter counts, and a clear refusal of a
typo'd width or depth (instead of a terabyte allocation or minutes of module building)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import nestdsl
from nestdsl.diagnostics import SpecError
from nestdsl.lower.common import BuildContext, CompileConfig
from nestdsl.lower.size import LIMIT_ENV, estimate
from nestdsl.pipeline import load_spec

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["hope", "titans-mal", "samba", "transformer", "hope-attention"])
def test_estimate_counts_the_parameters_exactly(name):
    spec = load_spec(ROOT / "specs" / f"{name}.yaml")
    est = estimate(spec, BuildContext(spec=spec, compile=CompileConfig(enabled=False)))
    model = nestdsl.compile(spec, compile=False).model
    assert est.params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("override", ["model.width=1000000000", "model.depth=100000"])
def test_a_huge_model_is_refused_before_allocating(override):
    spec = load_spec(ROOT / "specs" / "transformer.yaml", overrides=[override])
    t0 = time.perf_counter()
    with pytest.raises(SpecError) as e:
        nestdsl.compile(spec, compile=False)
    assert time.perf_counter() - t0 < 5
    text = e.value.render()
    assert "model too large" in text and LIMIT_ENV in text


def test_the_limit_can_be_lowered_and_raised(monkeypatch):
    spec = load_spec(ROOT / "specs" / "transformer.yaml")
    monkeypatch.setenv(LIMIT_ENV, "0.0001")
    with pytest.raises(SpecError, match="limit 0.1 MiB"):
        nestdsl.compile(spec, compile=False)
    monkeypatch.setenv(LIMIT_ENV, "1")
    nestdsl.compile(spec, compile=False)


def test_a_huge_batch_is_refused_at_the_data_section(tmp_path):
    """Activations that do not fit name the batch and point at `data:`, not at the model."""
    from nestdsl.runtime.train import train

    spec = load_spec(ROOT / "specs" / "transformer.yaml", overrides=["data.batch=100000000"])
    with pytest.raises(SpecError) as e:
        train(spec, run_dir=tmp_path / "run", steps=1)
    (diag,) = e.value.diagnostics
    assert diag.message.startswith("batch too large") and "batch 100000000" in diag.message
    assert diag.span.line == spec.data.span.line and "data.batch" in diag.hint
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").glob("step_*"))
