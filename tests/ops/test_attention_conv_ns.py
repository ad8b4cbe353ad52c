"""causal_attention, causal_conv1d and newton_schulz against naive references."""

from __future__ import annotations

import math

import pytest
import torch

from nestdsl.ops import causal_attention, causal_conv1d, newton_schulz


def naive_attention(q, k, v, window=None, scale=None):
    T, S = q.shape[-2], k.shape[-2]
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.mT) * scale
    for t in range(T):
        tt = t + S - T                                    # absolute position of query t
        for s in range(S):
            if s > tt or (window is not None and s <= tt - window):
                scores[..., t, s] = float("-inf")
    return torch.softmax(scores, -1) @ v


@pytest.mark.parametrize("window", [None, 1, 3, 50])
@pytest.mark.parametrize("S_extra", [0, 4])
def test_attention_matches_naive(window, S_extra):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, 11, 8, generator=g)
    k = torch.randn(2, 3, 11 + S_extra, 8, generator=g)
    v = torch.randn(2, 3, 11 + S_extra, 5, generator=g)
    out = causal_attention(q, k, v, window=window)
    torch.testing.assert_close(out, naive_attention(q, k, v, window), atol=1e-5, rtol=1e-5)
    out = causal_attention(q, k, v, window=window, scale=0.3)
    torch.testing.assert_close(out, naive_attention(q, k, v, window, 0.3), atol=1e-5, rtol=1e-5)


def test_attention_window_one_is_identity_on_values():
    q, k, v = (torch.randn(1, 2, 6, 4) for _ in range(3))
    torch.testing.assert_close(causal_attention(q, k, v, window=1), v)


@pytest.mark.parametrize("W", [1, 4])
def test_conv_matches_naive(W):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 9, 5, generator=g, requires_grad=True)
    w = torch.randn(5, W, generator=g)
    b = torch.randn(5, generator=g)
    y = causal_conv1d(x, w, b)
    ref = torch.zeros(2, 9, 5)
    for t in range(9):
        for j in range(W):
            src = t - W + 1 + j
            if src >= 0:
                ref[:, t] += w[:, j] * x[:, src]
    ref = ref + b
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    # causality: the output at t does not depend on inputs after t
    y[:, 3].sum().backward()
    assert x.grad[:, 4:].abs().sum() == 0


@pytest.mark.parametrize("shape", [(16, 16), (8, 32), (32, 8), (3, 12, 20)])
def test_newton_schulz_near_orthogonal(shape):
    g = torch.Generator().manual_seed(2)
    G = torch.randn(*shape, generator=g)
    X = newton_schulz(G, steps=5)
    assert X.shape == G.shape
    sv = torch.linalg.svdvals(X)
    assert sv.min() > 0.6 and sv.max() < 1.25, sv
    # same singular vectors as G: X ≈ U Vᵀ, so ⟨X, G⟩ = Σσ_i(G)·σ_i(X) > 0 and X Gᵀ ~ sym PSD
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    cos = (X * (U @ Vh)).sum((-1, -2)) / (U @ Vh).pow(2).sum((-1, -2))
    assert (cos > 0.85).all()


def test_newton_schulz_bfloat16():
    G = torch.randn(12, 20).bfloat16()
    X = newton_schulz(G)
    assert X.dtype == torch.bfloat16
    sv = torch.linalg.svdvals(X.float())
    assert sv.min() > 0.5 and sv.max() < 1.3
