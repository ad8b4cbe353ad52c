"""Streaming: running a sequence in segments with the carried state equals running it at once."""

from __future__ import annotations

import pytest
import torch
from lower_helpers import build, model_spec, randomize
from test_lower_memory import CASES

STREAM_CASES = ["deltanet", "gla", "dgd-dot (gated delta rule)", "linear C=4 before",
                "titans-lmm C=4", "ttt-mlp residual gelu C=4 chunk", "mlp dgd momentum C=1 before"]


@pytest.mark.parametrize("case", STREAM_CASES)
def test_memory_layer_streams(case: str) -> None:
    mem, flags, period = CASES[case]
    spec = model_spec(f"  m: {{{mem}}}", f"      - {{type: memory, memory: m, {flags}}}",
                      levels=f"  c: {{every: {period} tokens}}" if period else "")
    layer = build(spec).model.blocks[0].slots[0].layer
    randomize(layer)
    x = torch.randn(2, 24, 16)
    y_all, _ = layer(x)
    # C = 1 memories split anywhere; chunked ones at multiples of C.
    cuts = (0, 5, 6, 17, 24) if period is None else (0, 8, 12, 24)
    ys, state = [], None
    for a, b in zip(cuts[:-1], cuts[1:], strict=False):
        y, state = layer(x[:, a:b], state)
        ys.append(y)
    torch.testing.assert_close(torch.cat(ys, 1), y_all, atol=1e-5, rtol=1e-4)


def test_chunked_memory_refuses_mid_chunk_split() -> None:
    mem, flags, _ = CASES["titans-lmm C=4"]
    spec = model_spec(f"  m: {{{mem}}}", f"      - {{type: memory, memory: m, {flags}}}",
                      levels="  c: {every: 4 tokens}")
    layer = build(spec).model.blocks[0].slots[0].layer
    _, state = layer(torch.randn(1, 6, 16))
    with pytest.raises(ValueError, match="multiples of chunk_size"):
        layer(torch.randn(1, 4, 16), state)


HYBRID = """
nestdsl: 1
name: hybrid
model: {vocab: 32, width: 16, depth: 4, heads: 2, pattern: [mem, att, mal, mag]}
levels: {c: {every: 4 tokens}}
memories:
  dn: {kind: linear, objective: l2, rule: {kind: gd, lr: {learned: sigmoid}}}
  lmm: {kind: mlp, depth: 2, hidden: 2, objective: l2, level: c,
        rule: {kind: gd, lr: 0.1, retention: {learned: sigmoid}, momentum: 0.9}}
  swa: {kind: attention, window: 5}
  full: {kind: attention}
blocks:
  mem: {layers: [{type: memory, memory: dn}, {type: mlp, hidden: 2}]}
  att: {layers: [{type: memory, memory: full, conv: 3}, {type: mlp, hidden: 2, activation: gelu}]}
  mal: {layers: [{type: mal, memory: lmm, attention: swa}]}
  mag: {layers: [{type: mag, memory: lmm, attention: swa}]}
"""


def test_whole_model_streams() -> None:
    system = build(HYBRID)
    randomize(system.model)
    tokens = torch.randint(0, 32, (2, 24))
    logits = system.model(tokens)
    state, parts = None, []
    for a, b in ((0, 8), (8, 12), (12, 24)):
        out, state = system.model.forward_stream(tokens[:, a:b], state)
        parts.append(out)
    torch.testing.assert_close(torch.cat(parts, 1), logits, atol=1e-5, rtol=1e-4)
