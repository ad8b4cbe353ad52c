"""CMS layer (nestdsl.lower.cms) and the task sweep (nestdsl.lower.sweep): the `task` signal
against an explicit chunk-by-chunk loop, `local` against its memory op, level classification,
nested resets, streaming."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nestdsl.diagnostics import SpecError
from nestdsl.lower.cms import CMSLayerModule
from nestdsl.lower.common import BuildContext, CompileConfig
from nestdsl.lower.sweep import task_sweep
from nestdsl.ops import MemoryState, MLPMemory, memory_scan
from nestdsl.pipeline import load_spec
from nestdsl.spec import parse_text

W, V = 8, 11


def cms_spec(stages: list[dict[str, Any]], *, mode: str = "chain", levels: dict[str, str] | None = None,
             seq_len: int = 16, batch: int = 2):
    levels = levels or {"fast": "4 tokens", "mid": "8 tokens", "slow": "2 steps"}
    d = {
        "nestdsl": 1, "name": "t",
        "model": {"vocab": V, "width": W, "depth": 1, "heads": 1, "pattern": ["b"]},
        "levels": {k: {"every": v} for k, v in levels.items()},
        "cms": {"c": {"mode": mode, "stages": stages}},
        "blocks": {"b": {"layers": [{"type": "cms", "cms": "c"}]}},
        "data": {"task": "copy", "seq_len": seq_len, "batch": batch},
    }
    return parse_text(json.dumps(d))[1]


def build(stages, *, seed: int = 0, **kw) -> CMSLayerModule:
    spec = cms_spec(stages, **kw)
    torch.manual_seed(seed)
    return CMSLayerModule.from_spec(spec.blocks["b"].layers[0], BuildContext(spec, CompileConfig(enabled=False)))


class TinyLM(nn.Module):
    """embedding → CMS → head, with the streaming call the sweep needs."""

    def __init__(self, cms: CMSLayerModule) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, W)
        self.cms = cms
        self.head = nn.Linear(W, V, bias=False)

    def forward_stream(self, tokens, state):
        h = self.emb(tokens)
        y, s = self.cms(h, None if state is None else state["blocks"][0])
        return self.head(h + y), {"blocks": [s]}


def mlp(ws, u, act=F.silu):
    return act(u @ ws[0].mT) @ ws[1].mT


def rms(h, norm):
    return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight


# ---------------------------------------------------------------------------------------------
# task signal


def test_task_signal_equals_explicit_chunk_loop():
    """chain [task C=4 (lr .5), task C=8 (lr .3), persistent]: task_sweep == a plain loop that
    runs the model chunk by chunk, takes the loss gradient and applies the update."""
    stages = [{"level": "fast", "hidden": 2, "signal": "task", "lr": 0.5},
              {"level": "mid", "hidden": 2, "signal": "task", "lr": 0.3},
              {"level": "slow", "hidden": 2}]
    model = TinyLM(build(stages)).double()
    B, T = 2, 16
    tokens = torch.randint(0, V, (B, T))
    targets = torch.randint(0, V, (B, T))
    mask = (torch.rand(B, T) > 0.2).double()

    loss = task_sweep(model, tokens, targets, mask)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    # --- the explicit loop, written from the equations --------------------------------------
    s0, s1, s2 = model.cms.stages
    fast = [tuple(p.expand(B, *p.shape) for p in s0.weights),      # θ_fast, θ_mid per sequence
            tuple(p.expand(B, *p.shape) for p in s1.weights)]
    total, mid_loss = 0.0, 0.0
    for c in range(0, T, 4):                                        # chunks of the fastest level
        x = model.emb(tokens[:, c:c + 4])
        h = mlp(fast[0], x)                                         # h_1 = MLP_1(x)
        h = h + mlp(fast[1], rms(h, s1.norm))                       # h_2 = h_1 + MLP_2(norm h_1)
        h = h + mlp(tuple(s2.weights), rms(h, s2.norm))             # persistent stage
        logits = model.head(x + h)
        ce = F.cross_entropy(logits.flatten(0, 1), targets[:, c:c + 4].flatten(), reduction="none")
        chunk = (ce.view(B, 4) * mask[:, c:c + 4]).sum()
        total = total + chunk
        mid_loss = mid_loss + chunk
        if c + 4 < T:                                               # fast level: every 4 tokens
            g = torch.autograd.grad(chunk, fast[0], retain_graph=True)
            fast[0] = tuple(w - 0.5 * gi.detach() for w, gi in zip(fast[0], g, strict=True))
        if (c + 4) % 8 == 0 and c + 4 < T:                          # mid level: every 8 tokens
            g = torch.autograd.grad(mid_loss, fast[1], retain_graph=True)
            fast[1] = tuple(w - 0.3 * gi.detach() for w, gi in zip(fast[1], g, strict=True))
            mid_loss = 0.0
    ref = total / mask.sum()
    ref.backward()

    torch.testing.assert_close(loss, ref, atol=1e-12, rtol=1e-12)
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, atol=1e-12, rtol=1e-10, msg=n)
    # the writes did something: without them the loss differs
    frozen = TinyLM(model.cms).double()
    frozen.load_state_dict(model.state_dict())
    no_write = F.cross_entropy(frozen.forward_stream(tokens, None)[0].flatten(0, 1), targets.flatten(),
                               reduction="none")
    assert not torch.allclose((no_write * mask.flatten()).sum() / mask.sum(), loss)


def test_sweep_without_task_stages_is_plain_loss():
    model = TinyLM(build([{"level": "fast", "signal": "local"}, {"level": "slow"}]))
    tokens, targets = torch.randint(0, V, (2, 16)), torch.randint(0, V, (2, 16))
    loss = task_sweep(model, tokens, targets)
    logits, _ = model.forward_stream(tokens, None)
    torch.testing.assert_close(loss, F.cross_entropy(logits.flatten(0, 1), targets.flatten()))


def test_sweep_under_no_grad_still_writes():
    """Evaluation runs the same in-context learning (writes need grads w.r.t. fast weights only)."""
    model = TinyLM(build([{"level": "fast", "signal": "task", "lr": 1.0}]))
    tokens, targets = torch.randint(0, V, (2, 16)), torch.randint(0, V, (2, 16))
    with torch.no_grad():
        l_eval = task_sweep(model, tokens, targets)
    torch.testing.assert_close(l_eval.detach(), task_sweep(model, tokens, targets).detach())


# ---------------------------------------------------------------------------------------------
# local signal


def test_local_signal_equals_memory_op_and_streams():
    layer = build([{"level": "fast", "hidden": 2, "signal": "local", "lr": 0.05}]).double()
    x = torch.randn(2, 16, W, dtype=torch.float64)
    y, st = layer(x)
    stage = layer.stages[0]
    u = x[:, None]                                                   # one head
    o, ms = memory_scan(u, u, stage.value(u), memory=MLPMemory(2, 2 * W, "silu", False),
                        objective="l2", rule="gd", lr=0.05, chunk_size=4, read="chunk",
                        state=MemoryState(tuple(w[None] for w in stage.weights)))
    torch.testing.assert_close(y, o[:, 0], atol=1e-12, rtol=1e-10)
    for a, b in zip(st["fast"][0], ms.weights, strict=True):
        torch.testing.assert_close(a, b[:, 0], atol=1e-12, rtol=1e-10)
    # segments split anywhere (also inside a chunk) == one call
    ys, s = [], None
    for a, b in [(0, 3), (3, 9), (9, 16)]:
        yi, s = layer(x[:, a:b], s)
        ys.append(yi)
    torch.testing.assert_close(torch.cat(ys, 1), y, atol=1e-12, rtol=1e-10)
    for a, b in zip(st["fast"][0], s["fast"][0], strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


# ---------------------------------------------------------------------------------------------
# modes, levels


def test_independent_mode_is_softmax_weighted_sum():
    layer = build([{"level": "fast", "signal": "task"}, {"level": "slow", "hidden": 3}], mode="independent")
    with torch.no_grad():
        layer.mix.copy_(torch.tensor([0.3, -0.2]))
    x = torch.randn(2, 8, W)
    y, _ = layer(x)
    w = torch.softmax(torch.tensor([0.3, -0.2]), 0)
    ref = sum(w[i] * mlp(tuple(s.weights), x) for i, s in enumerate(layer.stages))
    torch.testing.assert_close(y, ref, atol=1e-6, rtol=1e-6)
    assert all(s.norm is None for s in layer.stages)


def test_nested_mode_resets_the_faster_stage():
    """nested [local C=4, task C=8]: stage 1 restarts from its initial state every 8 tokens."""
    layer = build([{"level": "fast", "signal": "local", "lr": 0.1}, {"level": "mid", "signal": "task"}],
                  mode="nested")
    assert layer.levels[0].reset_every == 8 and layer.levels[1].reset_every is None
    x = torch.randn(2, 12, W)
    _, st = layer(x)
    fresh = build([{"level": "fast", "signal": "local", "lr": 0.1}])
    fresh.stages[0].load_state_dict(layer.stages[0].state_dict())
    _, st_fresh = fresh(x[:, 8:12])                       # from the initial state, tokens 8..11
    for a, b in zip(st["fast"][0], st_fresh["fast"][0], strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_persistent_levels_and_classification():
    layer = build([{"level": "fast"}, {"level": "slow"}, {"level": "big"}],
                  levels={"fast": "4 tokens", "slow": "3 steps", "big": "64 tokens"}, seq_len=16, batch=2)
    # tokens per step = 2 × 16 = 32: "64 tokens" is persistent with k = 2
    got = [(name, [tuple(p.shape) for p in ps], k) for name, ps, k in layer.persistent_levels()]
    assert got == [("slow", [(4 * W, W), (W, 4 * W)], 3), ("big", [(4 * W, W), (W, 4 * W)], 2)]
    assert [lv.kind for lv in layer.levels] == ["in-context", "persistent", "persistent"]
    assert all(p is q for p, q in zip(layer.persistent_levels()[0][1], layer.stages[1].weights, strict=True))


def test_hope_preset_levels():
    spec = load_spec("specs/hope.yaml", overrides=["data={task: niah, variant: 1, seq_len: 128, "
                                                   "batch: 8}", "levels.cms_mid.every=64 tokens"])
    layer = CMSLayerModule.from_spec(spec.blocks["hope"].layers[1], BuildContext(spec, CompileConfig(enabled=False)))
    assert [(lv.kind, lv.tokens, lv.every_k, lv.signal) for lv in layer.levels] == [
        ("in-context", 16, 0, "task"), ("in-context", 64, 0, "task"), ("persistent", None, 4, "task")]
    assert [(n, k) for n, _, k in layer.persistent_levels()] == [("cms_slow", 4)]
    rows = layer.plan()
    assert len(rows) == 3
    # each stage's row carries its update equation and notes in their own columns
    assert all(r.update and r.update.startswith("θ ←") and r.kernel is None and r.notes for r in rows)
    assert rows[2].compiled.startswith("eager") and rows[2].params > 0


def test_period_between_levels_is_a_checker_error():
    from nestdsl.check import check_spec

    d = json.loads(cms_spec([{"level": "odd"}], levels={"odd": "20 tokens"}, seq_len=16,
                            batch=2).model_dump_json(exclude_none=True))
    d["model"]["vocab"] = 256                      # the copy task's vocabulary
    doc, spec = parse_text(json.dumps(d))
    with pytest.raises(SpecError, match="between in-context and persistent"):
        check_spec(spec, doc)


def test_carry_keeps_only_stream_stages():
    layer = build([{"level": "fast", "signal": "local", "scope": "stream"}, {"level": "mid", "signal": "task"}])
    x = torch.randn(2, 8, W)
    _, st = layer(x)
    nxt = layer.carry(st)
    assert nxt is not None and nxt["fast"][0] is st["fast"][0]
    assert all(a is not b for a, b in zip(nxt["fast"][1], st["fast"][1], strict=True))
