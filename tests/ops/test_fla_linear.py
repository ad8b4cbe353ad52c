"""The fla dispatch of linear memories (ops/fla_linear.py): which memories map onto an fla kernel,
and that the argument mapping computes nestdsl's recurrence. fla's chunk kernels need CUDA, so
here they are replaced by fla's own naive recurrences, which define their semantics; the GPU
suite (benchmarks/gpu_suite.py) runs the real kernels against the reference."""

from __future__ import annotations

import pytest
import torch

from nestdsl.ops import MemoryState, fla_linear, memory_scan
from nestdsl.ops.objectives import get_objective

B, H, T, D = 2, 2, 24, 8


def _naive_ops():
    pytest.importorskip("einops")
    gdr = pytest.importorskip("fla.ops.gated_delta_rule.naive")
    sgla = pytest.importorskip("fla.ops.simple_gla.naive")

    def simple_gla(q, k, v, g=None, **kw):
        if g is None:
            g = q.new_zeros(q.shape[:3])
        return sgla.naive_recurrent_simple_gla(q, k, v, g, **kw)

    def delta_rule(q, k, v, beta, **kw):
        return gdr.naive_recurrent_gated_delta_rule(q, k, v, beta, q.new_zeros(q.shape[:3]), **kw)

    def gated_delta_rule(q, k, v, g, beta, **kw):
        return gdr.naive_recurrent_gated_delta_rule(q, k, v, beta, g, **kw)

    return {"chunk_simple_gla": simple_gla, "chunk_delta_rule": delta_rule,
            "chunk_gated_delta_rule": gated_delta_rule}


# (objective, rule, erase, retention) → the fla op they map to
MAPPED = [
    ("dot", "gd", "eta", False, "chunk_simple_gla"),          # linear attention
    ("dot", "gd", "eta", True, "chunk_simple_gla"),           # GLA / Mamba2-like
    ("l2", "gd", "eta", False, "chunk_delta_rule"),           # DeltaNet
    ("dot", "dgd", "eta", False, "chunk_delta_rule"),         # the same recurrence
    ("dot", "dgd", "retained", True, "chunk_gated_delta_rule"),   # Gated DeltaNet
]


@pytest.mark.parametrize("obj,rule,erase,ret,op", MAPPED)
def test_fla_mapping_computes_the_reference_recurrence(obj, rule, erase, ret, op):
    ops = _naive_ops()
    p = fla_linear.plan(objective=get_objective(obj), rule=rule, erase=erase, read="after",
                        chunk_size=1, retention=ret, momentum=False)
    assert isinstance(p, fla_linear.FlaPlan) and p.op == op
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, T, D, generator=g)
    k = torch.nn.functional.normalize(torch.randn(B, H, T, D, generator=g), dim=-1)
    v = torch.randn(B, H, T, D, generator=g)
    lr = 0.1 + 0.8 * torch.rand(B, H, T, generator=g)
    alpha = 0.8 + 0.2 * torch.rand(B, H, T, generator=g) if ret else None
    M0 = 0.3 * torch.randn(B, H, D, D, generator=g)
    leaves = [q, k, v, lr, M0] + ([alpha] if ret else [])
    for x in leaves:
        x.requires_grad_(True)
    w = torch.randn(B, H, T, D, generator=g)

    o_ref, s_ref = memory_scan(q, k, v, objective=obj, rule=rule, erase=erase, lr=lr,
                               retention=alpha, chunk_size=1, state=MemoryState((M0,)),
                               kernel="reference")
    o, s = fla_linear.fla_scan(q, k, v, lr=lr, retention=alpha, state=MemoryState((M0,)), p=p,
                               ops=ops)
    torch.testing.assert_close(o, o_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s.weights[0], s_ref.weights[0], atol=1e-5, rtol=1e-5)
    g_ref = torch.autograd.grad((o_ref * w).sum() + s_ref.weights[0].sum(), leaves)
    g_fla = torch.autograd.grad((o * w).sum() + s.weights[0].sum(), leaves)
    for a, b in zip(g_fla, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kw,msg", [
    (dict(chunk_size=16), "chunk size 16"),
    (dict(momentum=True), "momentum"),
    (dict(read="before"), "read 'before'"),
    (dict(objective=get_objective("l2"), retention=True), "retention acts after the erase"),
    (dict(objective=get_objective("l2"), rule="dgd"), "has no fla kernel"),
    (dict(objective=get_objective("huber")), "'huber'"),
])
def test_fla_plan_names_what_has_no_kernel(kw, msg):
    args = dict(objective=get_objective("dot"), rule="gd", erase="eta", read="after",
                chunk_size=1, retention=False, momentum=False)
    args.update(kw)
    why = fla_linear.plan(**args)
    assert isinstance(why, str) and msg in why


def test_fla_refuses_cpu_and_float32_delta_rules():
    p = fla_linear.FlaPlan("chunk_delta_rule", False, False)
    why = fla_linear.refusal(p, dtype=torch.bfloat16, device=torch.device("cpu"))
    assert "needs a CUDA device" in why
    if fla_linear.available():
        why = fla_linear.refusal(p, dtype=torch.float32, device=torch.device("cuda"))
        assert "refuses torch.float32" in why
    with pytest.raises(ValueError, match="kernel .fla. cannot run this memory"):
        x = torch.randn(1, 1, 8, 4)
        memory_scan(x, x, x, objective="l2", chunk_size=1, kernel="fla")
