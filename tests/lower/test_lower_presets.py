"""Every model preset in specs/ lowers, runs forward + backward on CPU, and its parameter count
equals what `nestdsl compile SPEC` prints; the plan accounts for every parameter."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import nestdsl
from nestdsl.cli import app
from nestdsl.pipeline import load_spec

SPECS = Path(__file__).resolve().parents[2] / "specs"
PRESETS = sorted(p for p in SPECS.glob("*.yaml"))


def _load_or_skip(path: Path):
    spec = load_spec(path)
    if spec.model is None:
        pytest.skip("not a model spec")
    return spec


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_forward_backward_and_param_count(path: Path) -> None:
    spec = _load_or_skip(path)
    torch.manual_seed(0)
    system = nestdsl.compile(spec, compile=False)
    model = system.model
    T = 32 if "hope" not in path.stem else 64
    tokens = torch.randint(0, model.vocab, (1, T))
    logits = model(tokens)
    assert logits.shape == (1, T, model.vocab)
    loss = model.loss(tokens, tokens)
    assert torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())

    total = sum(p.numel() for p in model.parameters())
    assert system.param_count == total
    assert sum(r.params for r in system.plan) == total       # the plan accounts for everything
    # every parameter is in exactly one level group (what the runtime builds optimizers from)
    ids = [id(p) for lv in system.levels for p in lv.params]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters()}

    result = CliRunner().invoke(app, ["compile", str(path), "--no-compile"])
    assert result.exit_code == 0, result.output
    m = re.search(r"total parameters: ([\d,]+)", result.output)
    assert m and int(m.group(1).replace(",", "")) == total


def test_every_preset_is_covered() -> None:
    names = {p.stem for p in PRESETS}
    assert {"transformer", "deltanet", "titans-lmm"} <= names
