"""The paper-scale Titans and Hope presets start finite: one forward + backward on random tokens
(depth reduced to 1 and T = 64 to fit CI; `benchmarks/first_loss.py` runs the full depth)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import nestdsl
from nestdsl.pipeline import load_spec

SCALE = Path(__file__).resolve().parents[2] / "specs" / "scale"


@pytest.mark.slow      # 24-layer presets at full width
@pytest.mark.parametrize("preset", ["titans-lmm-340m", "hope-340m"])
def test_first_loss_is_finite(preset: str) -> None:
    spec = load_spec(SCALE / f"{preset}.yaml", overrides=[
        "model.depth=1", "data={task: copy, seq_len: 64, batch: 1, length: 8}"])
    torch.manual_seed(0)
    model = nestdsl.compile(spec, compile=False).model
    tokens = torch.randint(0, spec.model.vocab, (1, 65), generator=torch.Generator().manual_seed(0))
    loss = model.loss(tokens[:, :-1], tokens[:, 1:], None)
    loss.backward()
    assert math.isfinite(loss.item()) and abs(loss.item() - math.log(spec.model.vocab)) < 1.0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
