"""Attention, MAL, MAG and MLP layers against naive references written from their equations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from lower_helpers import assert_close_grads, build, grads, model_spec, randomize

from nestdsl.lower.attention import AttentionMixer
from nestdsl.lower.titans import MAG, MAL


def naive_rope(x: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """Rotate each pair (x_i, x_{i+d/2}) by angle pos · 10000^(−i/(d/2))."""
    B, H, T, d = x.shape
    out = torch.empty_like(x)
    for t in range(T):
        for i in range(d // 2):
            ang = torch.tensor((offset + t) * 10000.0 ** (-i / (d // 2)))
            a, b = x[:, :, t, i], x[:, :, t, i + d // 2]
            out[:, :, t, i] = a * ang.cos() - b * ang.sin()
            out[:, :, t, i + d // 2] = a * ang.sin() + b * ang.cos()
    return out


def naive_attention_layer(layer: AttentionMixer, x: torch.Tensor) -> torch.Tensor:
    """softmax(q kᵀ/√d + causal/window mask) v, with an explicit (T, T) mask."""
    B, T, D = x.shape
    H, d = layer.H, layer.d
    q, k, v = (t.reshape(B, T, H, d).transpose(1, 2) for t in (x @ layer.qkv.weight.T).split(H * d, -1))
    if layer.qk_norm:
        q = q / torch.sqrt(q.pow(2).mean(-1, keepdim=True) + 1e-6) * layer.q_norm.weight
        k = k / torch.sqrt(k.pow(2).mean(-1, keepdim=True) + 1e-6) * layer.k_norm.weight
    q, k = naive_rope(q), naive_rope(k)
    scores = q @ k.transpose(-1, -2) / d ** 0.5
    t, s = torch.arange(T)[:, None], torch.arange(T)[None, :]
    allowed = (s <= t) & ((t - s < layer.window) if layer.window else True)
    att = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    o = (att @ v).transpose(1, 2)                                    # (B, T, H, d)
    if layer.output_gate:
        o = o / torch.sqrt(o.pow(2).mean(-1, keepdim=True) + 1e-6) * layer.o_norm.weight
        o = o.reshape(B, T, H * d) * torch.sigmoid(x @ layer.g_proj.weight.T)
    else:
        o = o.reshape(B, T, H * d)
    return o @ layer.o_proj.weight.T


def _attn(flags: str, window: int | None = None) -> AttentionMixer:
    w = f", window: {window}" if window else ""
    spec = model_spec(f"  a: {{kind: attention{w}}}", f"      - {{type: memory, memory: a, {flags}}}")
    layer = build(spec).model.blocks[0].slots[0].layer
    randomize(layer)
    return layer


@pytest.mark.parametrize("flags,window", [("conv: 0, qk_norm: false, output_gate: false", None),
                                          ("conv: 0, qk_norm: false, output_gate: false", 5),
                                          ("conv: 0, qk_norm: true, output_gate: true", 7)])
def test_attention_matches_naive(flags: str, window: int | None) -> None:
    layer = _attn(flags, window)
    x = torch.randn(2, 12, 16)
    r = torch.randn(2, 12, 16)
    y, _ = layer(x)
    (y * r).sum().backward()
    g = grads(layer)
    layer.zero_grad(set_to_none=True)
    y_ref = naive_attention_layer(layer, x)
    (y_ref * r).sum().backward()
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-4)
    assert_close_grads(g, grads(layer))


@pytest.mark.parametrize("window,conv", [(None, 0), (5, 0), (4, 3)])
def test_attention_kv_cache_streaming(window: int | None, conv: int) -> None:
    layer = _attn(f"conv: {conv}, qk_norm: true, output_gate: true", window)
    x = torch.randn(2, 20, 16)
    y_all, _ = layer(x)
    ys, state = [], None
    for a, b in ((0, 7), (7, 8), (8, 20)):
        y, state = layer(x[:, a:b], state)
        ys.append(y)
    torch.testing.assert_close(torch.cat(ys, 1), y_all, atol=1e-5, rtol=1e-4)
    if window:
        assert state["k"].shape[2] <= window          # the cache is bounded by the window


TITANS_MEM = ("  m: {kind: mlp, depth: 2, hidden: 2, objective: l2, level: c, rule: {kind: gd, "
              "lr: {learned: sigmoid, scale: 0.1}, retention: {learned: sigmoid, init: 0.9}, "
              "momentum: {learned: sigmoid, init: 0.5}}}\n  swa: {kind: attention, window: 6}")


def _titans(kind: str):
    spec = model_spec(TITANS_MEM, f"      - {{type: {kind}, memory: m, attention: swa}}",
                      levels="  c: {every: 4 tokens}")
    system = build(spec)
    slot = system.model.blocks[0].slots[0]
    randomize(slot)
    return system, slot


def test_mag_gate() -> None:
    """y = x + [g ⊙ norm(Mem(n(x))) + (1 − g) ⊙ norm(SWA(n(x)))], g = σ(n(x) W_g + b)."""
    _, slot = _titans("mag")
    layer = slot.layer
    assert isinstance(layer, MAG)
    x = torch.randn(2, 12, 16)
    y, _ = slot(x, None)
    h = F.rms_norm(x, (16,), slot.norm.weight, 1e-6)
    m, _ = layer.memory(h)
    a = naive_attention_layer(layer.attention, h)
    g = torch.sigmoid(h @ layer.gate.weight.T + layer.gate.bias)
    rms = lambda z, w: z / torch.sqrt(z.pow(2).mean(-1, keepdim=True) + 1e-6) * w  # noqa: E731
    ref = x + g * rms(m, layer.norm_m.weight) + (1 - g) * rms(a, layer.norm_a.weight)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-4)


def test_mal_composition() -> None:
    """h = x + Mem(norm₁(x)); y = h + SWA(norm₂(h)) — and the block adds no second residual."""
    _, slot = _titans("mal")
    layer = slot.layer
    assert isinstance(layer, MAL) and slot.owns_residual
    x = torch.randn(2, 12, 16)
    y, _ = slot(x, None)
    h = x + layer.memory(F.rms_norm(x, (16,), layer.norm1.weight, 1e-6))[0]
    ref = h + naive_attention_layer(layer.attention, F.rms_norm(h, (16,), layer.norm2.weight, 1e-6))
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("activation", ["silu", "gelu"])
def test_mlp_layer(activation: str) -> None:
    spec = model_spec("  {}", f"      - {{type: mlp, hidden: 2, activation: {activation}}}")
    layer = build(spec).model.blocks[0].slots[0].layer
    x = torch.randn(2, 5, 16)
    y, _ = layer(x)
    if activation == "silu":   # SwiGLU
        ref = (F.silu(x @ layer.w1.weight.T) * (x @ layer.w3.weight.T)) @ layer.w2.weight.T
    else:
        ref = F.gelu(x @ layer.w1.weight.T) @ layer.w2.weight.T
    torch.testing.assert_close(y, ref)
    assert layer.w1.out_features == 32
