"""memory_scan: special cases, streaming, block-size invariance, dtypes, errors, chunk steps."""

from __future__ import annotations

import pytest
import torch

from nestdsl.ops import (
    MemoryState,
    MLPMemory,
    linear_chunk_step,
    memory_scan,
    mlp_chunk_step,
    mlp_forward,
)
from nestdsl.ops.linear_chunked import linear_scan_chunked
from nestdsl.ops.objectives import get_objective

B, H, T, D = 2, 2, 37, 6


def qkv(seed=0, dtype=torch.float32, T=T, Dv=D):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, D, generator=g, dtype=dtype)
    k = torch.nn.functional.normalize(torch.randn(B, H, T, D, generator=g, dtype=dtype), dim=-1)
    v = torch.randn(B, H, T, Dv, generator=g, dtype=dtype)
    return q, k, v


def test_linear_attention_special_case():
    """linear/dot/gd/η=1 is causal linear attention: o_t = Σ_{s≤t} v_s k_sᵀ q_t."""
    q, k, v = qkv()
    o, st = memory_scan(q, k, v, memory="linear", objective="dot", rule="gd", lr=1.0,
                        chunk_size=1)
    scores = (q @ k.mT).tril()
    torch.testing.assert_close(o, scores @ v, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(st.weights[0], v.mT @ k, atol=1e-5, rtol=1e-5)


def test_delta_rule_special_case():
    """linear/l2/gd with C = 1: M_t = M_{t−1} − η_t (M_{t−1} k_t − v_t) k_tᵀ."""
    q, k, v = qkv(1)
    eta = torch.rand(B, H, T)
    o, st = memory_scan(q, k, v, objective="l2", rule="gd", lr=eta, chunk_size=1)
    M = torch.zeros(B, H, D, D)
    outs = []
    for t in range(T):
        kt, vt = k[:, :, t, :, None], v[:, :, t, :, None]
        M = M - eta[:, :, t, None, None] * (M @ kt - vt) @ kt.mT
        outs.append((M @ q[:, :, t, :, None])[..., 0])
    torch.testing.assert_close(o, torch.stack(outs, 2), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(st.weights[0], M, atol=1e-5, rtol=1e-5)


def test_dgd_dot_retained_erase_is_gated_delta_rule():
    """linear/dot/dgd, ε = αη: M_t = α_t M_{t−1}(I − η_t k kᵀ) + η_t v kᵀ (docs/design.md §3.1)."""
    q, k, v = qkv(2)
    eta, alpha = torch.rand(B, H, T), 0.8 + 0.2 * torch.rand(B, H, T)
    o, st = memory_scan(q, k, v, objective="dot", rule="dgd", lr=eta, retention=alpha,
                        chunk_size=1, erase="retained")
    M = torch.zeros(B, H, D, D)
    eye = torch.eye(D)
    for t in range(T):
        kt, vt = k[:, :, t, :, None], v[:, :, t, :, None]
        e = eta[:, :, t, None, None]
        M = alpha[:, :, t, None, None] * M @ (eye - e * kt @ kt.mT) + e * vt @ kt.mT
    torch.testing.assert_close(st.weights[0], M, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("objective,rule", [("l2", "dgd"), ("dot", "gd"), ("l2", "gd")])
def test_block_size_never_changes_results(objective, rule):
    q, k, v = qkv(3)
    st0 = MemoryState((torch.randn(B, H, D, D),), (torch.randn(B, H, D, D),))
    args = dict(lr=torch.rand(B, H, T), retention=0.8 + 0.2 * torch.rand(B, H, T),
                momentum=0.5 * torch.rand(B, H, T), state=st0, objective=get_objective(objective),
                rule=rule, read="after", chunk_size=1)
    ref = linear_scan_chunked(q, k, v, block_size=64, **args)
    for bs in (1, 5, 16):
        out = linear_scan_chunked(q, k, v, block_size=bs, **args)
        torch.testing.assert_close(out[0], ref[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out[1].weights[0], ref[1].weights[0], atol=1e-5, rtol=1e-5)


def _mlp_state(spec, seed=0):
    g = torch.Generator().manual_seed(seed)
    return MemoryState(spec.init_weights(H, D, D, generator=g))


@pytest.mark.parametrize("memory,C,split", [
    ("linear", 1, 13), ("linear", 4, 16), ("mlp", 4, 20), ("mlp", 1, 7),
])
def test_streaming_two_calls_equal_one(memory, C, split):
    q, k, v = qkv(4)
    spec = MLPMemory(depth=2, hidden=8)
    mem = "linear" if memory == "linear" else spec
    st0 = None if memory == "linear" else _mlp_state(spec)
    gates = dict(lr=0.1 + 0.2 * torch.rand(B, H, T), retention=0.9 + 0.1 * torch.rand(B, H, T),
                 momentum=0.5 * torch.rand(B, H, T))
    kw = dict(memory=mem, objective="l2", rule="dgd", chunk_size=C)
    o, st = memory_scan(q, k, v, state=st0, **gates, **kw)
    first = {n: g[:, :, :split] for n, g in gates.items()}
    second = {n: g[:, :, split:] for n, g in gates.items()}
    o1, st1 = memory_scan(q[:, :, :split], k[:, :, :split], v[:, :, :split], state=st0,
                          **first, **kw)
    assert st1.offset == 0
    o2, st2 = memory_scan(q[:, :, split:], k[:, :, split:], v[:, :, split:], state=st1,
                          **second, **kw)
    torch.testing.assert_close(torch.cat([o1, o2], 2), o, atol=1e-5, rtol=1e-5)
    for a, b in zip(st2.weights + st2.momentum, st.weights + st.momentum, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_streaming_misaligned_split_raises():
    q, k, v = qkv(5)
    _, st = memory_scan(q[:, :, :10], k[:, :, :10], v[:, :, :10], chunk_size=4)
    assert st.offset == 2
    with pytest.raises(ValueError, match="multiples of chunk_size"):
        memory_scan(q[:, :, 10:], k[:, :, 10:], v[:, :, 10:], chunk_size=4, state=st)


def test_bfloat16_inputs():
    q, k, v = qkv(6, dtype=torch.bfloat16)
    o, st = memory_scan(q, k, v, rule="dgd", chunk_size=1, lr=0.5)
    assert o.dtype == torch.bfloat16 and st.weights[0].dtype == torch.float32
    o32, st32 = memory_scan(q.float(), k.float(), v.float(), rule="dgd", chunk_size=1, lr=0.5)
    torch.testing.assert_close(o.float(), o32, atol=3e-2, rtol=3e-2)
    spec = MLPMemory(depth=2, hidden=8)
    o, st = memory_scan(q, k, v, memory=spec, state=_mlp_state(spec), lr=0.1, momentum=0.5)
    assert o.dtype == torch.bfloat16 and all(w.dtype == torch.float32 for w in st.weights)


def test_per_batch_initial_weights():
    q, k, v = qkv(7)
    spec = MLPMemory(depth=2, hidden=8)
    per_head = _mlp_state(spec).weights
    per_batch = tuple(w.expand(B, *w.shape).clone() for w in per_head)
    a, _ = memory_scan(q, k, v, memory=spec, state=MemoryState(per_head), lr=0.1)
    b, _ = memory_scan(q, k, v, memory=spec, state=MemoryState(per_batch), lr=0.1)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kwargs,match", [
    (dict(rule="sgd"), "rule"),
    (dict(read="during"), "read"),
    (dict(objective="lp3"), "unknown objective"),
    (dict(chunk_size=0), "chunk_size"),
    (dict(kernel="triton"), "kernel .triton. cannot run"),
    (dict(memory=MLPMemory()), "initial weights"),
    (dict(memory="conv"), "memory"),
    (dict(lr=torch.ones(3)), "lr"),
    (dict(state=MemoryState((torch.zeros(H, D, D + 1),))), "state.weights"),
    (dict(state=MemoryState((torch.zeros(H, D, D),), (torch.zeros(H, D, D),))), "momentum"),
])
def test_validation_errors(kwargs, match):
    q, k, v = qkv()
    with pytest.raises(ValueError, match=match):
        memory_scan(q, k, v, **kwargs)


def test_residual_needs_square():
    q, k, v = qkv(Dv=D + 1)
    spec = MLPMemory(depth=2, hidden=8, residual=True)
    with pytest.raises(ValueError, match="Dk == Dv"):
        memory_scan(q, k, v, memory=spec, state=_mlp_state(spec))


def test_mlp_chunk_step_hope_style():
    """Self-generated targets v̂ = M(θ_{c(t)}; v_t) (Hope Eq. 84) fed to the public chunk step
    equal memory_scan with those targets, and gradients flow through v̂ into θ_0."""
    spec = MLPMemory(depth=2, hidden=8, residual=True)
    q, k, v = qkv(8)
    C = 8
    w0 = tuple(w.requires_grad_() for w in _mlp_state(spec).weights)
    state = MemoryState(tuple(w.expand(B, *w.shape) for w in w0))
    outs, vhats = [], []
    for s in range(0, T, C):
        sl = slice(s, s + C)
        vhat = mlp_forward(state.weights, v[:, :, sl], spec)
        vhats.append(vhat)
        o, state = mlp_chunk_step(state, q[:, :, sl], k[:, :, sl], vhat, 0.1, 0.95, None,
                                  spec=spec, objective="l2", rule="dgd", read="after")
        outs.append(o)
    o_ref, _ = memory_scan(q, k, torch.cat(vhats, 2), memory=spec, state=MemoryState(w0),
                           lr=0.1, retention=0.95, rule="dgd", chunk_size=C, kernel="reference")
    torch.testing.assert_close(torch.cat(outs, 2), o_ref, atol=1e-5, rtol=1e-5)
    torch.cat(outs, 2).sum().backward()
    assert all(w.grad is not None and torch.isfinite(w.grad).all() for w in w0)


def test_linear_chunk_step_exact_block():
    q, k, v = qkv(9)
    o_full, st_full = memory_scan(q, k, v, objective="l2", rule="gd", lr=0.5, chunk_size=1)
    st = MemoryState((torch.zeros(B, H, D, D),))
    o, st = linear_chunk_step(st, q, k, v, 0.5, None, None, objective="l2", rule="gd",
                              read="after", exact=True)
    torch.testing.assert_close(o, o_full, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("memory", ["linear", "mlp"])
def test_compiled_matches_eager(memory):
    torch._dynamo.reset()
    q, k, v = qkv(10, T=40)
    spec = MLPMemory(depth=2, hidden=8)
    mem = "linear" if memory == "linear" else spec
    leaves = dict(
        q=q, k=k, v=v, lr=0.1 + 0.3 * torch.rand(B, H, 40),
        retention=0.9 + 0.1 * torch.rand(B, H, 40), momentum=0.5 * torch.rand(B, H, 40))
    for t in leaves.values():
        t.requires_grad_(True)
    st0 = None if memory == "linear" else _mlp_state(spec)
    C = 1 if memory == "linear" else 8
    res = []
    for compile_ in (False, True):
        o, st = memory_scan(leaves["q"], leaves["k"], leaves["v"], memory=mem, state=st0,
                            lr=leaves["lr"], retention=leaves["retention"],
                            momentum=leaves["momentum"], rule="dgd", chunk_size=C,
                            compile=compile_)
        loss = (o * o).sum() + st.weights[0].sum()
        grads = torch.autograd.grad(loss, list(leaves.values()))
        res.append((o, st.weights, grads))
    (o0, w0, g0), (o1, w1, g1) = res
    torch.testing.assert_close(o1, o0, atol=1e-5, rtol=1e-5)
    for a, b in zip(w1 + g1, w0 + g0, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
